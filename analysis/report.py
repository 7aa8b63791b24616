"""Build a sweep's report (provenance, tables, figures) and log it to an analysis run linked to the sweep."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from analysis.figures import FIGURES, build_figure
from analysis.groups import FINISHED, Group, build_groups
from analysis.present import headline
from analysis.runs import Histories, children, find_sweep, sweep_plan
from analysis.tables import ALL_TABLE, MAIN_TABLE, TABLES, Table, build_table, sweep_table
from resnorm import names
from resnorm.errors import ResnormError
from resnorm.model import depth
from resnorm.norms import NORM_NAMES


@dataclass
class Report:
    parent: Run
    runs: pd.DataFrame  # every training run under the sweep
    groups: list[Group]
    tables: dict[str, Table]
    figures: dict[str, Figure | None]
    figure_missing: dict[str, list[str]]
    out_dir: Path
    provenance: list[tuple[str, str]] = field(default_factory=list)
    gradcam: Figure | None = None
    gradcam_note: str = ""  # which runs the grid explains, or why there is none
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the analysis run

    @property
    def sweep_run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def finished(self) -> int:
        return sum(len(g.finished) for g in self.groups)

    @property
    def planned(self) -> int:
        return sum(len(g.planned) for g in self.groups)


def build(client: MlflowClient, parent: Run, out_dir: Path) -> Report:
    planned, mode = sweep_plan(parent)
    runs = children(parent)
    groups = build_groups(runs, planned, mode)
    histories = Histories(client)
    tables = {ALL_TABLE: sweep_table(groups, histories)}
    tables.update({spec.id: build_table(spec, groups, histories) for spec in TABLES})
    figures, missing = {}, {}
    for spec in FIGURES:
        figures[spec.id], missing[spec.id] = build_figure(spec, groups, histories)
    report = Report(parent, runs, groups, tables, figures, missing, out_dir)
    report.provenance = provenance(client, report)
    return report


def _values(groups: list[Group], name: str) -> str:
    found = sorted({str(g.value(name)) for g in groups if len(g.finished) or g.planned})
    return ", ".join(found) if found else "–"


def _datasets(client: MlflowClient, runs: pd.DataFrame) -> str:
    """Name and digest of every split the finished runs trained on (from their dataset inputs)."""
    seen = {}
    for data, run_id in zip(runs["data"], runs["run_id"]):
        if data in seen:
            continue
        inputs = client.get_run(run_id).inputs.dataset_inputs
        seen[data] = ", ".join(f"{d.dataset.name} {d.dataset.digest}" for d in inputs) or "not recorded"
    return "; ".join(f"{k} ({v})" for k, v in seen.items()) or "–"


def _unplanned(groups: list[Group]) -> str:
    """A warning when runs lie outside the re-made plan (the preset's code changed since the sweep)."""
    outside = [g for g in groups if not g.planned]
    if not outside:
        return ""
    return (f"; {len(outside)} configurations ran but are not in the plan re-made from the sweep's params "
            "(was the preset changed since?)")


def provenance(client: MlflowClient, report: Report) -> list[tuple[str, str]]:
    """What produced the report, as (label, value) lines."""
    parent, groups = report.parent, report.groups
    done = report.runs[report.runs["status"] == FINISHED]
    error = parent.data.tags.get(names.TAG_ERROR, "")
    seeds = sorted({s for g in groups for s in g.planned})

    def tags(column: str) -> str:
        return ", ".join(sorted({v for v in done[column] if v})) or "not recorded"

    return [
        ("sweep", f"{parent.info.run_name} (run {parent.info.run_id}, preset "
                  f"{parent.data.tags.get(names.TAG_PRESET, '?')}), status {parent.info.status}"
                  + (f": {error}" if error else "")),
        ("runs", f"{report.finished} of {report.planned} planned seeds finished, over {len(groups)} configurations"
                 + _unplanned(groups)),
        ("data", f"{_values(groups, 'data')}; datasets {_datasets(client, done)}"),
        ("split sizes", tags("splits")),
        ("image size", _values(groups, "image_size")),
        ("depth", ", ".join(f"{depth(int(n))} (n={n})" for n in _values(groups, "n").split(", "))),
        ("epochs", _values(groups, "epochs")),
        ("batch size", _values(groups, "batch_size")),
        ("optimiser", "; ".join(sorted({f"{g.config.optimizer} lr {g.config.lr:g}, weight decay "
                                        f"{g.config.weight_decay:g}, momentum {g.config.momentum:g}" for g in groups}))),
        ("schedule", _values(groups, "scheduler")),
        ("augmentation", _values(groups, "augment")),
        ("seeds", ", ".join(map(str, seeds)) or "–"),
        ("device", tags("device")),
        ("training mode", f"asked {_values(groups, 'mode')}; ran {tags('speed')}"),
        ("versions", tags("versions")),
    ]


def gradcam_of_champions(report: Report) -> tuple[Figure | None, str]:
    """GradCAM of each norm's best (validation accuracy) finished run among Table 3's rows."""
    from resnorm.explain import explain

    frames = [r.group.finished for r in report.tables[MAIN_TABLE].rows if r.n]
    if not frames:
        return None, "No GradCAM grid: the sweep has no finished Table 3 run."
    chosen = pd.concat(frames, ignore_index=True)
    best = chosen.loc[chosen.groupby("norm")[names.final_metric("val", "accuracy")].idxmax()]
    by_norm = dict(zip(best["norm"], best["run_id"]))
    try:
        result = explain([f"runs:/{by_norm[n]}" for n in NORM_NAMES if n in by_norm])
    except ResnormError as e:
        return None, f"No GradCAM grid: {e}"
    runs_text = ", ".join(f"{n} ({by_norm[n][:8]})" for n in NORM_NAMES if n in by_norm)
    return result.figure, f"Each norm's best Table 3 run of this sweep: {runs_text}."


def analysis_name(parent: Run) -> str:
    """Unique to its sweep: the sweep's name and the start of its run id."""
    return f"analysis-{parent.info.run_name}-{parent.info.run_id[:8]}"


def log(client: MlflowClient, report: Report) -> str:
    """Log the report to an analysis run linked both ways with the sweep, with headline metrics."""
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
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        items = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i : i + 1000])
        mlflow.log_artifacts(str(report.out_dir), artifact_path="report")
    return run_id


def analyze(experiment: str, sweep_run_id: str, out_dir: str) -> Report:
    """Rebuild the tables and figures of a sweep, write them to ``out_dir`` and log them to an analysis run."""
    from analysis.write import write

    client = MlflowClient()
    parent = find_sweep(client, experiment, sweep_run_id)
    report = build(client, parent, Path(out_dir))
    report.gradcam, report.gradcam_note = gradcam_of_champions(report)
    write(report)
    report.run_id = log(client, report)
    return report
