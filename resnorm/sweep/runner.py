"""A sweep under its parent run: plan it, skip the children that finished, resume the interrupted
ones, run the rest (in rounds, for an adaptive sweep), and end the parent with a true status."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import mlflow
import torch
from mlflow.tracking import MlflowClient

from resnorm import PROJECT_ROOT, machine, names, snapshots
from resnorm.config import FIELD_TYPES, Launch, TrainConfig, parse_value, resolve_device
from resnorm.errors import ConfigError, Interrupted, ResnormError, RunBusy, one_line
from resnorm.sweep import forkserver
from resnorm.sweep.child import Child, SweepContext, sweep_children
from resnorm.sweep.planner import (
    AUTO,
    FIRST_ROUND_SEEDS,
    MARGIN,
    MAX_SEEDS,
    child_names,
    config_label,
    plan,
    varying,
)
from resnorm.sweep.pool import Pool
from resnorm.sweep.raytune import RAY_CPUS_PER_TRIAL, check_ray_address, run_ray
from resnorm.tracking import (
    FINISHED,
    KILLED,
    RUNNING,
    check_own_sweep_run,
    check_tracking_server,
    log_new_params,
    mark_model_training,
    unquote_param,
    use_default_experiment,
)

CPU_PARALLEL = 2  # children at once on the CPU by default (see default_parallel)
EXECUTORS = ("local", "ray")


class SweepIncomplete(ResnormError):
    """Some children did not finish; re-running into the same parent retries only those."""


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep was asked for: its plan's inputs and how its children are launched."""

    preset: str
    grid: str
    seeds: int | None  # seeds per configuration; None: adaptive (seeds=auto), in rounds up to max_seeds
    executor: str  # local, ray
    parallel: int  # children at once; 0: one per GPU, or 1 without GPUs
    ray_address: str
    training: Mapping[str, str]  # training parameters for every child, as text ("" = the preset's)
    launch: Launch = Launch()  # every child's device and mode (its threads: its share of the CPUs)
    storage_path: str = ""  # ray: where Tune keeps its state (empty: a temporary folder here)
    max_seeds: int = MAX_SEEDS  # adaptive: the most seeds a configuration gets
    margin: float = MARGIN  # adaptive: the claims' smallest effect of interest, in accuracy points

    def __post_init__(self) -> None:
        if self.parallel < 0:
            raise ConfigError(f"parallel must be at least 0, got {self.parallel}")
        if self.adaptive and self.max_seeds < FIRST_ROUND_SEEDS:
            raise ConfigError(
                f"max_seeds {self.max_seeds} is below the {FIRST_ROUND_SEEDS} seeds of an adaptive sweep's "
                f"first round; give max_seeds >= {FIRST_ROUND_SEEDS}"
            )
        if not (math.isfinite(self.margin) and 0.01 <= self.margin <= 50):
            raise ConfigError(f"margin {self.margin} is not a number of accuracy points from 0.01 to 50")

    @property
    def adaptive(self) -> bool:
        return self.seeds is None

    @property
    def first_seeds(self) -> int:
        """Seeds per configuration of the plan (of its first round, when adaptive)."""
        return FIRST_ROUND_SEEDS if self.seeds is None else self.seeds

    def params(self, parallel: int) -> dict[str, str]:
        return {
            "preset": self.preset,
            "grid": self.grid,
            "seeds": AUTO if self.adaptive else str(self.seeds),
            "max_seeds": str(self.max_seeds),
            "margin": f"{self.margin:g}",
            "executor": self.executor,
            "parallel": str(parallel),
            "ray_address": self.ray_address,
            "device": self.launch.device,
            "mode": self.launch.mode,
            "storage_path": self.storage_path,
            **{k: str(v) for k, v in self.training.items()},
        }


# What an adaptive sweep asks after each round: the configurations (with their seeds) of the next round,
# none to stop. The entry point gives it (analysis.adaptive.next_round): the claims live in analysis/.
NextRound = Callable[[MlflowClient, str, Sequence[Child], SweepSpec], list[TrainConfig]]


def finished_configs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> set[TrainConfig]:
    done = sweep_children(client, experiment_id, parent_run_id, f"attributes.status = '{FINISHED}'")
    return {c for c in map(_config_of, done) if c is not None}


def interrupted_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[TrainConfig, str]:
    """Children that did not finish but left a snapshot (in their run's artifacts or on this
    machine): config -> run id (the latest attempt of a config wins). A child killed with its
    sweep stays RUNNING or ends KILLED; one whose process died under a live sweep was marked
    FAILED. Each continues from its snapshot."""
    runs = sweep_children(client, experiment_id, parent_run_id, f"attributes.status != '{FINISHED}'")
    return {
        _config_of(r): r.info.run_id
        for r in runs
        if _config_of(r) is not None
        and (snapshots.path_for(r.info.run_id).exists() or snapshots.stored(client, r.info.run_id))
    }


def restartable_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[TrainConfig, str]:
    """Children stopped before their first snapshot (KILLED, or left RUNNING by a sweep killed outright, no
    live process holding them): config -> run id. Each trains anew into its own run, which holds nothing yet
    (an epoch's metrics are sent once a snapshot holds it), so a sweep stopped mid-round leaves no second
    run of a child behind."""
    runs = sweep_children(client, experiment_id, parent_run_id, f"attributes.status != '{FINISHED}'")
    return {
        config: r.info.run_id
        for r in runs
        if r.info.status in (KILLED, RUNNING)
        and (config := _config_of(r)) is not None
        and not snapshots.is_locked(r.info.run_id)
        and not (snapshots.path_for(r.info.run_id).exists() or snapshots.stored(client, r.info.run_id))
    }


def default_parallel(gpus: int) -> int:
    """One child per GPU; on the CPU two at once, each with half the cores: on 2 cores the digits
    preset ran 1.5x faster as two 1-thread children than as one 2-thread child (README, "Sweeps")."""
    return gpus or min(CPU_PARALLEL, machine.available_cpus())


def _config_of(run) -> TrainConfig | None:
    try:
        return TrainConfig.from_params(run.data.params)
    except ResnormError:  # not a training run of ours; it cannot match a planned config
        return None


# What a sweep re-run into its parent must repeat: what it plans and how its children train
# (executor, parallel, Ray's address and storage may change between attempts).
SAME_ON_RERUN = ("preset", "grid", "seeds", "max_seeds", "margin", "device", "mode", *FIELD_TYPES)


def _rerun_value(key: str, text: str):
    text = unquote_param(text).strip()
    if key in FIELD_TYPES and text:
        return parse_value(key, text)
    if key in ("max_seeds", "margin") and text:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _check_same_sweep(existing: Mapping[str, str], params: Mapping[str, str], run_id: str) -> None:
    """A re-run into ``run_id`` must ask for the sweep it continues: its params would lie otherwise.
    A sweep of fixed seeds ignores max_seeds and margin."""
    fixed = _rerun_value("seeds", existing.get("seeds", params["seeds"])) != AUTO
    changed = [
        f"{k}={unquote_param(existing[k])!r} (now {params[k]!r})"
        for k in SAME_ON_RERUN
        if k in existing
        and k in params
        and _rerun_value(k, existing[k]) != _rerun_value(k, params[k])
        and not (fixed and k in ("max_seeds", "margin"))
    ]
    if changed:
        raise ConfigError(f"run {run_id} is a sweep with {', '.join(changed)}; resume it with the same parameters")


def run_sweep(spec: SweepSpec, next_round: NextRound | None = None) -> None:
    """Run ``spec`` as one parent run (or continue the one `mlflow run --run-id` names). An adaptive
    sweep needs ``next_round``, which says after each round what the next one trains."""
    if spec.adaptive and next_round is None:
        raise ConfigError(
            "an adaptive sweep (seeds=auto) needs the claims to plan its rounds: run it from its entry point"
        )
    configs = plan(spec.preset, spec.grid, spec.first_seeds, spec.training)
    if spec.executor == "ray":
        check_ray_address(spec.ray_address)
    gpus = torch.cuda.device_count() if resolve_device(spec.launch.device).type == "cuda" else 0
    parallel = spec.parallel or default_parallel(gpus)
    check_tracking_server()
    pointer = os.environ.get("MLFLOW_RUN_ID")  # made by `mlflow run`, or the parent a re-run continues
    held = None
    if pointer:  # a parent another sweep is running is refused before anything starts
        check_own_sweep_run(pointer)
        held = hold_parent(pointer)
    else:
        use_default_experiment()
    if spec.executor == "local":
        forkserver.start()  # its imports overlap the setup below (the entry point started it earlier still)
    try:
        # No run_name here: resuming a run with a name renames it, before the parameters are checked.
        with mlflow.start_run(run_id=pointer or None) as parent:
            held = held or hold_parent(parent.info.run_id)
            _run_under(parent, spec, parallel, gpus, configs, next_round)
    finally:
        if held is not None:
            held.close()


def hold_parent(run_id: str):
    """The parent's lock (the one a training run holds: ``snapshots.lock``), for the life of the sweep: two
    sweeps in one parent would train its children twice."""
    try:
        return snapshots.lock(run_id)
    except RunBusy:
        pid = snapshots.holder(run_id)
        raise RunBusy(
            f"run {run_id} is a sweep that another live process (pid {pid}) is running; wait for it or stop it "
            "before running into it again",
            run_id,
        ) from None


def _run_under(
    parent, spec: SweepSpec, parallel: int, gpus: int, configs: list[TrainConfig], next_round: NextRound | None
) -> None:
    """The sweep inside its parent run, which it ends with a true status."""
    client, run_id = MlflowClient(), parent.info.run_id
    try:
        _open_parent(client, run_id, spec, parallel)
        ctx = SweepContext(run_id, parent.info.experiment_id, spec.preset, str(PROJECT_ROOT))
        mark_model_training(client, parent.info.experiment_id)
        # Each child's threads: the CPUs Ray gives a trial, or this machine's shared by `parallel`.
        per_child = machine.share(parallel) if spec.executor == "local" else RAY_CPUS_PER_TRIAL
        planned = planned_children(spec, configs, per_child)
        if spec.adaptive:
            planned = earlier_rounds(client, run_id, spec, planned, per_child)
        with contextlib.ExitStack() as stack:
            pools: list[Pool] = []

            def execute(children: list[Child]) -> dict[TrainConfig, str]:
                if not children:
                    return {}
                if spec.executor == "ray":
                    per_gpu = max(1, parallel // max(1, gpus))
                    return run_ray(ctx, children, spec.ray_address, gpus, per_gpu, spec.storage_path)
                if not pools:  # made once, kept for later rounds: an adaptive sweep's rounds reuse its workers
                    size = parallel if spec.adaptive else min(parallel, len(children))
                    pools.append(stack.enter_context(Pool(str(PROJECT_ROOT), size, gpus)))
                return pools[0].run(ctx, children)

            _rounds(client, ctx, spec, planned, parallel, per_child, next_round, execute)
    except KeyboardInterrupt as e:
        reason = (
            f"{str(e) or 'interrupted'}; its running children were stopped; re-run into this parent "
            f"(mlflow run ... --run-id {run_id}) to resume them"
        )
        client.set_tag(run_id, names.TAG_ERROR, reason)
        mlflow.end_run(KILLED)
        raise Interrupted(reason) from e
    except BaseException as e:
        client.set_tag(run_id, names.TAG_ERROR, one_line(e))
        raise


def _rounds(
    client: MlflowClient,
    ctx: SweepContext,
    spec: SweepSpec,
    planned: list[Child],
    parallel: int,
    per_child: int,
    next_round: NextRound | None,
    execute: Callable[[list[Child]], dict[TrainConfig, str]],
) -> None:
    """Train what is planned; an adaptive sweep then asks for the next round, until it asks for none."""
    while True:
        client.log_dict(ctx.parent_run_id, plan_record(spec, planned, ctx.parent_run_id, parallel), names.SWEEP_PLAN)
        children = _to_run(client, ctx, spec, planned)
        _check_finished(execute(children), children, ctx.parent_run_id)
        if not spec.adaptive:
            return
        more = next_round(client, ctx.parent_run_id, planned, spec)
        if not more:
            return
        planned = planned + new_round(spec, planned, more, per_child)
        print(f"round {planned[-1].round}: {len(more)} more children, for the claims still open", flush=True)


def _open_parent(client: MlflowClient, run_id: str, spec: SweepSpec, parallel: int) -> None:
    existing = client.get_run(run_id).data.params
    params = spec.params(parallel)
    _check_same_sweep(existing, params, run_id)
    log_new_params(client, run_id, params)
    client.set_tag(run_id, names.TAG_SWEEP, "true")
    client.set_tag(run_id, names.TAG_PRESET, spec.preset)
    if names.TAG_ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, names.TAG_ERROR)  # an earlier attempt's reason; this one will say its own
    client.update_run(run_id, name=f"sweep-{spec.preset}")


def planned_children(
    spec: SweepSpec, configs: Sequence[TrainConfig], threads_each: int, round_: int = 1
) -> list[Child]:
    """Every planned configuration as a child: its run name (unique in the sweep) and label (by the
    settings that vary in it), its launch. An adaptive sweep names its children as a sweep of many seeds."""
    fields = varying(configs)
    named = child_names(configs, 2 if spec.adaptive else spec.first_seeds)
    launch = replace(spec.launch, threads=threads_each)
    return [Child(c, named[c], launch, config_label(c, fields), round_) for c in configs]


def new_round(spec: SweepSpec, planned: list[Child], more: Sequence[TrainConfig], threads_each: int) -> list[Child]:
    """The children of an adaptive sweep's next round, named and labelled as the first round's."""
    everything = [c.config for c in planned] + list(more)
    children = planned_children(spec, everything, threads_each, planned[-1].round + 1)
    return children[len(planned) :]


def earlier_rounds(
    client: MlflowClient, run_id: str, spec: SweepSpec, first: list[Child], threads_each: int
) -> list[Child]:
    """An adaptive sweep re-run into its parent: every round the earlier attempt planned (its
    ``sweep.json``), which must extend this sweep's first round; else the first round alone."""
    if not any(f.path == names.SWEEP_PLAN for f in client.list_artifacts(run_id)):
        return first
    try:
        record = mlflow.artifacts.load_dict(f"runs:/{run_id}/{names.SWEEP_PLAN}")
        entries = [(TrainConfig.from_record(c["config"]), int(c.get("round", 1))) for c in record["configurations"]]
    except (KeyError, TypeError, ValueError, ResnormError, mlflow.exceptions.MlflowException) as e:
        raise ConfigError(
            f"cannot read the plan {names.SWEEP_PLAN} of sweep {run_id} to resume its rounds: {e}"
        ) from None
    if [c for c, r in entries if r == 1] != [c.config for c in first]:
        raise ConfigError(
            f"the plan {names.SWEEP_PLAN} of sweep {run_id} does not start with this sweep's first round; "
            "resume it with the same parameters"
        )
    children = list(first)
    for r in range(2, max((r for _, r in entries), default=1) + 1):
        more = [c for c, k in entries if k == r]
        if more:
            children += new_round(spec, children, more, threads_each)
    return children


def plan_record(spec: SweepSpec, children: list[Child], run_id: str, parallel: int) -> dict:
    """``sweep.json``: what the sweep plans (every configuration and seed, its name, label and round) and
    the command that re-runs it into its parent. ``analyze`` reports against it."""
    params = " ".join(f"-P {k}={shlex.quote(v)}" for k, v in spec.params(parallel).items() if v)
    record = {
        "preset": spec.preset,
        "grid": spec.grid,
        "seeds": AUTO if spec.adaptive else spec.seeds,
        "mode": spec.launch.mode,
        "parameters": spec.params(parallel),
        "configurations": [
            {"name": c.name, "label": c.label, "config": asdict(c.config), "round": c.round} for c in children
        ],
        "command": f"mlflow run {PROJECT_ROOT} -e sweep {params} --env-manager local --run-id {run_id}",
    }
    if spec.adaptive:
        record["design"] = {"max_seeds": spec.max_seeds, "margin": spec.margin, "rounds": children[-1].round}
    return record


def _to_run(client: MlflowClient, ctx: SweepContext, spec: SweepSpec, planned: list[Child]) -> list[Child]:
    """The planned children that have not finished, each resuming its interrupted run if it has one."""
    done = finished_configs(client, ctx.experiment_id, ctx.parent_run_id)
    interrupted = interrupted_children(client, ctx.experiment_id, ctx.parent_run_id)
    restart = restartable_children(client, ctx.experiment_id, ctx.parent_run_id)
    children = []
    for c in planned:
        if c.config in done:
            continue
        resume = interrupted.get(c.config, "")
        again = "" if resume else restart.get(c.config, "")
        if again and names.TAG_ERROR in client.get_run(again).data.tags:
            client.delete_tag(again, names.TAG_ERROR)  # its stop's reason; this attempt will say its own
        children.append(replace(c, launch=replace(c.launch, resume=resume), run_id=again))
    where = f" (round {planned[-1].round})" if spec.adaptive else ""
    print(
        f"sweep {spec.preset} (run {ctx.parent_run_id}){where}: {len(planned)} configurations, "
        f"{len(planned) - len(children)} already finished, {len(children)} to run "
        f"({sum(bool(c.launch.resume) for c in children)} resumed from a snapshot, "
        f"{sum(bool(c.run_id) for c in children)} started again in their runs)",
        flush=True,
    )
    return children


def _check_finished(statuses: Mapping[TrainConfig, str], children: Sequence[Child], run_id: str) -> None:
    """Every child must have FINISHED (statuses by configuration); else the sweep is incomplete."""
    failed = [c.name for c in children if statuses.get(c.config) != FINISHED]
    if failed:
        raise SweepIncomplete(
            f"{len(failed)} of {len(children)} children did not finish ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); re-run with `mlflow run ... --run-id {run_id}` to retry them"
        )
