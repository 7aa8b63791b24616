"""Query a sweep: its parent, its finished children as a typed DataFrame, metric histories."""

from __future__ import annotations

from functools import lru_cache

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.errors import ResnormError
from resnorm.config import FIELD_TYPES, parse_value

# The config fields a table row or a figure series may select on.
SELECT_FIELDS = ("norm", "optimizer", "lr", "weight_decay", "augment", "batch_size", "scheduler")
FINAL_METRICS = tuple(names.final_metric(s, m) for s in ("train", "val", "test") for m in names.SCORES)


class NoSweep(ResnormError):
    """There is no sweep to analyse."""


def find_sweep(client: MlflowClient, experiment: str, sweep_run_id: str = "") -> Run:
    """The sweep's parent run: the one given, or the latest in ``experiment``."""
    if sweep_run_id:
        try:
            run = client.get_run(sweep_run_id)
        except mlflow.exceptions.MlflowException:
            raise NoSweep(f"run {sweep_run_id!r} does not exist") from None
        if run.data.tags.get(names.TAG_SWEEP) != "true":
            raise NoSweep(f"run {sweep_run_id!r} is not a sweep's parent run (no tag {names.TAG_SWEEP}=true)")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NoSweep(f"there is no experiment {experiment!r}; run a sweep first (mlflow run . -e sweep)")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise NoSweep(f"experiment {experiment!r} has no sweep; run one first (mlflow run . -e sweep)")
    return runs[0]


def children(parent: Run) -> pd.DataFrame:
    """One row per FINISHED child: run_id, run_name, typed config fields, and the final metrics."""
    frame = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        max_results=50000,
        output_format="pandas",
    )
    columns = ["run_id", "run_name", *FIELD_TYPES, *FINAL_METRICS, "start_time"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame({"run_id": frame["run_id"], "run_name": frame.get("tags.mlflow.runName"),
                        "start_time": frame["start_time"]})
    for field in FIELD_TYPES:
        raw = frame.get(f"params.{field}")
        out[field] = None if raw is None else [None if pd.isna(v) else parse_value(field, v) for v in raw]
    for key in FINAL_METRICS:
        out[key] = frame.get(f"metrics.{key}")
    # A configuration trained twice into one sweep (same seed) counts once: the latest run.
    out = out.sort_values("start_time").drop_duplicates(subset=list(FIELD_TYPES), keep="last")
    return out[columns].sort_values("start_time").reset_index(drop=True)


def select(runs: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows whose config equals every ``field=value`` given (floats compared with a tolerance)."""
    mask = pd.Series(True, index=runs.index)
    for field, value in where.items():
        column = runs[field]
        if isinstance(value, float):
            mask &= (column.astype(float) - value).abs() <= 1e-12 + 1e-9 * abs(value)
        else:
            mask &= column == value
    return runs[mask]


class Histories:
    """Metric histories, fetched once per (run, key)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._get = lru_cache(maxsize=None)(self._fetch)

    def _fetch(self, run_id: str, key: str) -> pd.Series:
        points = self.client.get_metric_history(run_id, key)
        series = pd.Series({p.step: p.value for p in sorted(points, key=lambda p: (p.step, p.timestamp))}, dtype=float)
        return series.sort_index()

    def __call__(self, run_id: str, key: str) -> pd.Series:
        return self._get(run_id, key)
