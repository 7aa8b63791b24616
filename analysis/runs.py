"""Query a sweep: its parent, every child as a typed DataFrame, its plan, metric histories."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.bundle import SPLITS
from resnorm.config import FIELD_TYPES, TrainConfig
from resnorm.errors import ResnormError
from resnorm.sweep import child_name, plan
from resnorm.sweep.child import sweep_children
from resnorm.sweep.planner import varying
from resnorm.tracking import unquote_param

FINAL_METRICS = tuple(names.final_metric(s, m) for s in SPLITS for m in names.SCORES)
# Launch settings that change results or speed without being TrainConfig fields.
LAUNCH_FIELDS = ("mode",)
DEFAULT_MODE = "auto"


class NoSweep(ResnormError):
    """There is no sweep to analyse."""


def _latest_sweep(client: MlflowClient, experiment_ids: list[str]) -> Run | None:
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids, f"tags.`{names.TAG_SWEEP}` = 'true'", order_by=["attributes.start_time DESC"], max_results=1
    )
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


@dataclass(frozen=True)
class Plan:
    """What a sweep planned: its configurations (with seeds), their run names, the training mode of
    its children, and where the plan was read from."""

    configs: list[TrainConfig]
    names: dict[str, TrainConfig]  # run name -> configuration (a child that failed before its params)
    mode: str
    source: str  # "sweep.json" or "re-planned from the sweep's params"


def sweep_plan(client: MlflowClient, parent: Run) -> Plan:
    """The plan the sweep logged (``sweep.json``: every planned configuration and seed); a sweep
    from before it logged one is re-planned from its params. An unreadable plan is an error:
    without it, failed and missing seeds could not be told apart from configurations that were
    never planned."""
    p = {k: unquote_param(v) for k, v in parent.data.params.items()}
    mode = p.get("mode", DEFAULT_MODE) or DEFAULT_MODE
    logged = _logged_plan(client, parent)
    if logged is not None:
        try:
            entries = [(c["name"], TrainConfig(**c["config"])) for c in logged["configurations"]]
        except (KeyError, TypeError, ResnormError) as e:
            raise NoSweep(f"cannot read the plan {names.SWEEP_PLAN} of sweep {parent.info.run_id}: {e}") from None
        return Plan([c for _, c in entries], dict(entries), logged.get("mode", mode), names.SWEEP_PLAN)
    overrides = {k: v for k, v in p.items() if k in FIELD_TYPES}
    try:
        preset = p.get("preset") or parent.data.tags.get(names.TAG_PRESET, "quick")
        seeds = int(p.get("seeds", "1") or 1)
        configs = plan(preset, p.get("grid", ""), seeds, overrides)
    except (ResnormError, ValueError) as e:
        raise NoSweep(f"cannot re-plan sweep {parent.info.run_id} from its params: {e}") from None
    fields = varying(configs)
    return Plan(configs, {child_name(c, seeds, fields): c for c in configs}, mode, "re-planned from the sweep's params")


def _logged_plan(client: MlflowClient, parent: Run) -> dict | None:
    if not any(f.path == names.SWEEP_PLAN for f in client.list_artifacts(parent.info.run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, names.SWEEP_PLAN, tmp)
        try:
            return json.loads(Path(path).read_text())
        except ValueError as e:
            raise NoSweep(f"cannot read the plan {names.SWEEP_PLAN} of sweep {parent.info.run_id}: {e}") from None


def without_seed(cfg: TrainConfig) -> TrainConfig:
    """The configuration a run belongs to: every field but the seed."""
    return dataclasses.replace(cfg, seed=TrainConfig.seed)


def _config_of(params: dict) -> TrainConfig | None:
    try:
        return TrainConfig.from_params(params)
    except ResnormError:
        return None


def children(client: MlflowClient, parent: Run, planned: Plan) -> pd.DataFrame:
    """One row per training run under the sweep, whatever its status: run_id, run_name, status,
    start_time, error/device tags, typed config fields, mode, ``config`` (without the seed) and
    the final metrics. A run that failed before it logged its params is known by its name (the
    sweep names each child before it starts); a run that is neither is left out."""
    columns = [
        "run_id",
        "run_name",
        "status",
        "start_time",
        "error",
        "device",
        "speed",
        "versions",
        "splits",
        *FIELD_TYPES,
        *LAUNCH_FIELDS,
        "config",
        *FINAL_METRICS,
        names.BEST_EPOCH,
    ]
    tags = {
        "error": names.TAG_ERROR,
        "device": names.TAG_DEVICE,
        "speed": names.TAG_SPEED,
        "versions": names.TAG_VERSIONS,
        "splits": names.TAG_SPLIT_SIZES,
    }
    records = []
    for r in sweep_children(client, parent.info.experiment_id, parent.info.run_id):
        params = r.data.params
        cfg = _config_of(params) if "norm" in params else planned.names.get(r.info.run_name)
        if cfg is None:
            continue
        record = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "mode": params.get("mode", planned.mode),
            "config": without_seed(cfg),
            **dataclasses.asdict(cfg),
        }
        record.update({column: r.data.tags.get(tag, "") for column, tag in tags.items()})
        record.update({key: r.data.metrics.get(key, float("nan")) for key in (*FINAL_METRICS, names.BEST_EPOCH)})
        records.append(record)
    return pd.DataFrame.from_records(records, columns=columns)  # sweep_children: oldest first


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
