"""Query a sweep: its parent, every child as a typed DataFrame, its plan, metric histories."""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.config import FIELD_TYPES, TrainConfig
from resnorm.errors import ResnormError
from resnorm.sweep import plan
from resnorm.tracking import unquote_param

SPLITS = ("train", "val", "test")
FINAL_METRICS = tuple(names.final_metric(s, m) for s in SPLITS for m in names.SCORES)
# Launch settings that change results or speed without being TrainConfig fields.
LAUNCH_FIELDS = ("mode",)
DEFAULT_MODE = "auto"


class NoSweep(ResnormError):
    """There is no sweep to analyse."""


def _latest_sweep(client: MlflowClient, experiment_ids: list[str]) -> Run | None:
    if not experiment_ids:
        return None
    runs = client.search_runs(experiment_ids, f"tags.`{names.TAG_SWEEP}` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def find_sweep(client: MlflowClient, experiment: str = "", sweep_run_id: str = "") -> Run:
    """The sweep's parent run: the one given; else the latest sweep of ``experiment``; else the
    latest of the experiment this process was launched in (``MLFLOW_EXPERIMENT_ID``, as under
    `mlflow run`); else the latest sweep of any experiment."""
    if sweep_run_id:
        try:
            run = client.get_run(sweep_run_id)
        except mlflow.exceptions.MlflowException:
            raise NoSweep(f"run {sweep_run_id!r} does not exist") from None
        if run.data.tags.get(names.TAG_SWEEP) != "true":
            raise NoSweep(f"run {sweep_run_id!r} is not a sweep's parent run (no tag {names.TAG_SWEEP}=true)")
        return run
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise NoSweep(f"there is no experiment {experiment!r}; run a sweep first (mlflow run . -e sweep)")
        found = _latest_sweep(client, [exp.experiment_id])
        if found is None:
            raise NoSweep(f"experiment {experiment!r} has no sweep; run one first (mlflow run . -e sweep)")
        return found
    launched = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
    found = _latest_sweep(client, [launched]) if launched else None
    if found is None:
        everywhere = [e.experiment_id for e in client.search_experiments(max_results=50000)]
        found = _latest_sweep(client, everywhere)
    if found is None:
        raise NoSweep("no experiment has a sweep; run one first (mlflow run . -e sweep)")
    return found


def sweep_plan(parent: Run) -> tuple[list[TrainConfig], str]:
    """The configurations the sweep planned, re-planned from its logged params, and the training
    mode its children were launched with. An unreadable plan is an error: without it, failed and
    missing seeds could not be told apart from configurations that were never planned."""
    p = {k: unquote_param(v) for k, v in parent.data.params.items()}
    overrides = {k: v for k, v in p.items() if k in FIELD_TYPES}
    try:
        preset = p.get("preset") or parent.data.tags.get(names.TAG_PRESET, "quick")
        configs = plan(preset, p.get("grid", ""), int(p.get("seeds", "1") or 1), overrides)
    except (ResnormError, ValueError) as e:
        raise NoSweep(f"cannot re-plan sweep {parent.info.run_id} from its params: {e}") from None
    return configs, p.get("mode", DEFAULT_MODE) or DEFAULT_MODE


def without_seed(cfg: TrainConfig) -> TrainConfig:
    """The configuration a run belongs to: every field but the seed."""
    return dataclasses.replace(cfg, seed=TrainConfig.seed)


def _config_of(params: dict) -> TrainConfig | None:
    try:
        return TrainConfig.from_params(params)
    except ResnormError:
        return None


def children(parent: Run) -> pd.DataFrame:
    """One row per training run under the sweep, whatever its status: run_id, run_name, status,
    start_time, error/device tags, typed config fields, mode, ``config`` (without the seed) and
    the final metrics. Runs that are not training runs (no training params) are left out."""
    frame = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=50000,
        output_format="pandas",
    )
    columns = ["run_id", "run_name", "status", "start_time", "error", "device", "speed", "versions", "splits",
               *FIELD_TYPES, *LAUNCH_FIELDS, "config", *FINAL_METRICS, names.BEST_EPOCH]
    records = []
    for _, r in frame.iterrows():
        params = {k.removeprefix("params."): v for k, v in r.items()
                  if k.startswith("params.") and isinstance(v, str)}
        cfg = _config_of(params) if "norm" in params else None
        if cfg is None:
            continue
        record = {"run_id": r["run_id"], "run_name": r.get("tags.mlflow.runName"), "status": r["status"],
                  "start_time": r["start_time"], "mode": params.get("mode", DEFAULT_MODE),
                  "config": without_seed(cfg), **dataclasses.asdict(cfg)}
        for column, tag in (("error", names.TAG_ERROR), ("device", names.TAG_DEVICE), ("speed", names.TAG_SPEED),
                            ("versions", names.TAG_VERSIONS), ("splits", names.TAG_SPLIT_SIZES)):
            value = r.get(f"tags.{tag}")
            record[column] = value if isinstance(value, str) else ""
        for key in (*FINAL_METRICS, names.BEST_EPOCH):
            record[key] = r.get(f"metrics.{key}", float("nan"))
        records.append(record)
    out = pd.DataFrame.from_records(records, columns=columns)
    return out.sort_values("start_time", kind="stable").reset_index(drop=True)


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
