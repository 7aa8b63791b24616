"""The report's run: the files ``write`` made, logged to an analysis run linked both ways with its
sweep, with the headline figures as metrics."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from analysis.present import headline
from analysis.report import Report
from analysis.tables import ALL_TABLE, MAIN_TABLE
from resnorm import names

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
REPORT_ARTIFACTS = "report"


def analysis_name(parent: Run) -> str:
    """Unique to its sweep: the sweep's name and the start of its run id."""
    return f"analysis-{parent.info.run_name}-{parent.info.run_id[:8]}"


def log(client: MlflowClient, report: Report, files: list[Path], out: Path) -> str:
    """Log ``files`` (the report ``write`` made in ``out``, nothing else there) under ``report/`` to an
    analysis run linked both ways with the sweep, with headline metrics; returns its run id."""
    parent = report.parent
    # Under `mlflow run -e analyze` the run exists already (MLFLOW_RUN_ID); otherwise it goes
    # next to the sweep.
    experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else parent.info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        client.update_run(run_id, name=analysis_name(parent))
        client.set_tag(run_id, names.TAG_ANALYSIS_OF, parent.info.run_id)
        client.set_tag(run_id, names.TAG_PRESET, parent.data.tags.get(names.TAG_PRESET, ""))
        client.set_tag(parent.info.run_id, names.TAG_ANALYSIS, run_id)
        metrics = {**headline(report.tables[MAIN_TABLE]), **headline(report.tables[ALL_TABLE])}
        metrics["seeds_finished"], metrics["seeds_planned"] = float(report.finished), float(report.planned)
        metrics[names.CLAIMS_DECIDED] = float(sum(c.decided for c in report.claims))
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        items = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])
        for path in files:
            folder = path.parent.relative_to(out)
            client.log_artifact(
                run_id, str(path), REPORT_ARTIFACTS if str(folder) == "." else f"{REPORT_ARTIFACTS}/{folder}"
            )
    return run_id
