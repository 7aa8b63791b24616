"""Query a sweep: its parent, every child as a typed DataFrame, its plan, metric histories."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.bundle import SPLITS
from resnorm.config import FIELD_TYPES, TrainConfig
from resnorm.errors import ResnormError
from resnorm.sweep.child import sweep_children
from resnorm.sweep.planner import FIRST_ROUND_SEEDS, MARGIN, MAX_SEEDS, child_names, parse_seeds, plan
from resnorm.sweep.record import plan_problem, read_plan
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
    its children, where the plan was read from, and, for an adaptive sweep, the round that planned each
    configuration, its cap and margin. ``warnings``: where the logged plan disagreed with the sweep."""

    configs: list[TrainConfig]
    names: dict[str, TrainConfig]  # run name -> configuration (a child that failed before its params)
    mode: str
    source: str  # "sweep.json" or "re-planned from the sweep's params"
    rounds: dict[TrainConfig, int] = field(default_factory=dict)  # adaptive: configuration -> its round
    max_seeds: int = 0  # adaptive: the most seeds a configuration may get; 0: seeds fixed in advance
    margin: float = 0.0  # adaptive: the margin its rounds were decided with (a fraction); 0: none
    warnings: tuple[str, ...] = ()

    @property
    def adaptive(self) -> bool:
        return self.max_seeds > 0


def sweep_plan(client: MlflowClient, parent: Run) -> Plan:
    """The plan the sweep logged (``sweep.json``: every planned configuration and seed, and its round),
    if it holds together: readable, each configuration once, the seeds its ``seeds`` param says (an
    adaptive sweep: its first round's, then more of the same configurations in order, up to max_seeds).
    When it does not, one warning says why and the plan is made again from the sweep's params, as for a
    sweep from before it logged one (``check_plan`` also holds it against the runs). Without any plan,
    failed and missing seeds could not be told apart from configurations that were never planned: a
    sweep whose params cannot be planned either is an error."""
    p = {k: unquote_param(v) for k, v in parent.data.params.items()}
    mode = p.get("mode", DEFAULT_MODE) or DEFAULT_MODE
    try:
        seeds = parse_seeds(p.get("seeds", "1") or "1")
        max_seeds = int(float(p.get("max_seeds") or MAX_SEEDS)) if seeds is None else 0
        margin = float(p.get("margin") or MARGIN) / 100 if seeds is None else 0.0
    except (ResnormError, ValueError) as e:
        raise NoSweep(f"cannot read the params of sweep {parent.info.run_id}: {e}") from None
    logged = read_plan(client, parent.info.run_id)
    problem = plan_problem(logged, seeds, max_seeds) if logged is not None else ""
    if logged is not None and not problem:
        entries = [
            (c["name"], TrainConfig.from_record(c["config"]), c.get("round", 1)) for c in logged["configurations"]
        ]
        return Plan(
            [c for _, c, _ in entries],
            {n: c for n, c, _ in entries},
            logged.get("mode", mode),
            names.SWEEP_PLAN,
            {c: r for _, c, r in entries} if seeds is None else {},
            max_seeds,
            margin,
        )
    replanned = replan(parent)
    if logged is None:
        return replanned
    warning = (
        f"the plan {names.SWEEP_PLAN} of sweep {parent.info.run_id} does not hold together ({problem}); "
        "reported against the plan its params give"
    )
    return dataclasses.replace(replanned, warnings=(warning,))


def replan(parent: Run) -> Plan:
    """The plan a sweep's params give (an adaptive sweep's: its first round)."""
    p = {k: unquote_param(v) for k, v in parent.data.params.items()}
    overrides = {k: v for k, v in p.items() if k in FIELD_TYPES}
    try:
        preset = p.get("preset") or parent.data.tags.get(names.TAG_PRESET, "quick")
        seeds = parse_seeds(p.get("seeds", "1") or "1")
        configs = plan(preset, p.get("grid", ""), seeds or FIRST_ROUND_SEEDS, overrides)
        max_seeds = int(float(p.get("max_seeds") or MAX_SEEDS)) if seeds is None else 0
        margin = float(p.get("margin") or MARGIN) / 100 if seeds is None else 0.0
    except (ResnormError, ValueError) as e:
        raise NoSweep(f"cannot re-plan sweep {parent.info.run_id} from its params: {e}") from None
    named = child_names(configs, 2 if seeds is None else seeds)
    return Plan(
        configs,
        {n: c for c, n in named.items()},
        p.get("mode", DEFAULT_MODE) or DEFAULT_MODE,
        "re-planned from the sweep's params",
        {c: 1 for c in configs} if seeds is None else {},
        max_seeds,
        margin,
    )


def check_plan(parent: Run, planned: Plan, runs: pd.DataFrame) -> Plan:
    """A logged plan against the sweep's runs: a child of the sweep (with its params) that the plan does
    not hold means the plan is not the sweep's whole plan (cut short, or edited): one warning, and the plan
    its params give instead. A re-made plan is left as it is (runs outside it are the preset's code having
    changed since, and the report names them)."""
    if planned.source != names.SWEEP_PLAN or not len(runs):
        return planned
    have = {(without_seed(c), c.seed) for c in planned.configs}
    outside = sorted(
        {(cfg.run_name(), int(seed)) for cfg, seed in zip(runs["config"], runs["seed"]) if (cfg, int(seed)) not in have}
    )
    if not outside:
        return planned
    try:
        replanned = replan(parent)
    except NoSweep as e:
        warning = f"the plan {names.SWEEP_PLAN} leaves out {len(outside)} of the sweep's runs, and {e}"
        return dataclasses.replace(planned, warnings=(*planned.warnings, warning))
    name, seed = outside[0]
    warning = (
        f"the plan {names.SWEEP_PLAN} of sweep {parent.info.run_id} leaves out {len(outside)} of its runs "
        f"(e.g. {name} seed {seed}); reported against the plan its params give"
    )
    return dataclasses.replace(replanned, warnings=(*planned.warnings, warning))


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


def unusable(scores: Mapping[str, float]) -> str:
    """Why a finished run's final scores (``FINAL_METRICS``, as ``children`` reads them: NaN when not
    logged) cannot be used, or "": each must be a finite number and a fraction in [0, 1] (a NaN or a
    tampered 1.5 is not a score; it would read as a spread of zero, or as 103 %)."""
    for key in FINAL_METRICS:
        value = float(scores.get(key, math.nan))
        if not math.isfinite(value):
            return f"{key} is missing or not a number ({value})"
        if not 0.0 <= value <= 1.0:
            return f"{key} is {value:g}, outside [0, 1]"
    return ""


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
