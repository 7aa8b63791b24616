"""A sweep under its parent run: plan it, skip the children that finished, resume the interrupted
ones, run the rest, and end the parent with a true status."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import mlflow
import torch
from mlflow.tracking import MlflowClient

from resnorm import PROJECT_ROOT, machine, names, snapshots
from resnorm.config import FIELD_TYPES, Launch, TrainConfig, parse_value, resolve_device
from resnorm.errors import ConfigError, Interrupted, ResnormError, one_line
from resnorm.sweep import forkserver
from resnorm.sweep.child import Child, SweepContext, sweep_children
from resnorm.sweep.planner import child_name, config_label, plan, varying
from resnorm.sweep.pool import Pool
from resnorm.sweep.raytune import RAY_CPUS_PER_TRIAL, check_ray_address, run_ray
from resnorm.tracking import (
    FINISHED,
    KILLED,
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
    seeds: int
    executor: str  # local, ray
    parallel: int  # children at once; 0: one per GPU, or 1 without GPUs
    ray_address: str
    training: Mapping[str, str]  # training parameters for every child, as text ("" = the preset's)
    launch: Launch = Launch()  # every child's device and mode (its threads: its share of the CPUs)
    storage_path: str = ""  # ray: where Tune keeps its state (empty: a temporary folder here)

    def __post_init__(self) -> None:
        if self.parallel < 0:
            raise ConfigError(f"parallel must be at least 0, got {self.parallel}")

    def params(self, parallel: int) -> dict[str, str]:
        return {
            "preset": self.preset,
            "grid": self.grid,
            "seeds": str(self.seeds),
            "executor": self.executor,
            "parallel": str(parallel),
            "ray_address": self.ray_address,
            "device": self.launch.device,
            "mode": self.launch.mode,
            "storage_path": self.storage_path,
            **{k: str(v) for k, v in self.training.items()},
        }


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
SAME_ON_RERUN = ("preset", "grid", "seeds", "device", "mode", *FIELD_TYPES)


def _check_same_sweep(existing: Mapping[str, str], params: Mapping[str, str], run_id: str) -> None:
    """A re-run into ``run_id`` must ask for the sweep it continues: its params would lie otherwise."""

    def value(key: str, text: str):
        text = unquote_param(text)
        return parse_value(key, text) if key in FIELD_TYPES and text.strip() else text.strip()

    changed = [
        f"{k}={unquote_param(existing[k])!r} (now {params[k]!r})"
        for k in SAME_ON_RERUN
        if k in existing and k in params and value(k, existing[k]) != value(k, params[k])
    ]
    if changed:
        raise ConfigError(f"run {run_id} is a sweep with {', '.join(changed)}; resume it with the same parameters")


def run_sweep(spec: SweepSpec) -> None:
    """Run ``spec`` as one parent run (or continue the one `mlflow run --run-id` names)."""
    configs = plan(spec.preset, spec.grid, spec.seeds, spec.training)
    if spec.executor == "ray":
        check_ray_address(spec.ray_address)
    gpus = torch.cuda.device_count() if resolve_device(spec.launch.device).type == "cuda" else 0
    parallel = spec.parallel or default_parallel(gpus)
    if spec.executor == "local":
        forkserver.start()  # its imports overlap the setup below (the entry point started it earlier still)
    check_tracking_server()
    pointer = os.environ.get("MLFLOW_RUN_ID")  # made by `mlflow run`, or the parent a re-run continues
    if pointer:
        check_own_sweep_run(pointer)
    else:
        use_default_experiment()
    # No run_name here: resuming a run with a name renames it, before the parameters are checked.
    with mlflow.start_run(run_id=pointer or None) as parent:
        _run_under(parent, spec, parallel, gpus, configs)


def _run_under(parent, spec: SweepSpec, parallel: int, gpus: int, configs: list[TrainConfig]) -> None:
    """The sweep inside its parent run, which it ends with a true status."""
    client, run_id = MlflowClient(), parent.info.run_id
    try:
        _open_parent(client, run_id, spec, parallel)
        ctx = SweepContext(run_id, parent.info.experiment_id, spec.preset, str(PROJECT_ROOT))
        mark_model_training(client, parent.info.experiment_id)
        # Each child's threads: the CPUs Ray gives a trial, or this machine's shared by `parallel`.
        per_child = machine.share(parallel) if spec.executor == "local" else RAY_CPUS_PER_TRIAL
        planned = planned_children(spec, configs, per_child)
        client.log_dict(run_id, plan_record(spec, planned, run_id, parallel), names.SWEEP_PLAN)
        children = _to_run(client, ctx, spec, planned)
        if spec.executor == "local":
            with Pool(str(PROJECT_ROOT), min(parallel, len(children)), gpus) as pool:
                statuses = pool.run(ctx, children) if children else {}
        else:
            per_gpu = max(1, parallel // max(1, gpus))
            statuses = run_ray(ctx, children, spec.ray_address, gpus, per_gpu, spec.storage_path)
        _check_finished(statuses, len(children), run_id)
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


def planned_children(spec: SweepSpec, configs: list[TrainConfig], threads_each: int) -> list[Child]:
    """Every planned configuration as a child: its run name and label (by the settings that vary in
    the sweep), its launch."""
    fields = varying(configs)
    return [
        Child(c, child_name(c, spec.seeds, fields), replace(spec.launch, threads=threads_each), config_label(c, fields))
        for c in configs
    ]


def plan_record(spec: SweepSpec, children: list[Child], run_id: str, parallel: int) -> dict:
    """``sweep.json``: what the sweep plans (every configuration and seed, its name and label) and the
    command that re-runs it into its parent. ``analyze`` reports against it."""
    params = " ".join(f"-P {k}={shlex.quote(v)}" for k, v in spec.params(parallel).items() if v)
    return {
        "preset": spec.preset,
        "grid": spec.grid,
        "seeds": spec.seeds,
        "mode": spec.launch.mode,
        "parameters": spec.params(parallel),
        "configurations": [{"name": c.name, "label": c.label, "config": asdict(c.config)} for c in children],
        "command": f"mlflow run {PROJECT_ROOT} -e sweep {params} --env-manager local --run-id {run_id}",
    }


def _to_run(client: MlflowClient, ctx: SweepContext, spec: SweepSpec, planned: list[Child]) -> list[Child]:
    """The planned children that have not finished, each resuming its interrupted run if it has one."""
    done = finished_configs(client, ctx.experiment_id, ctx.parent_run_id)
    interrupted = interrupted_children(client, ctx.experiment_id, ctx.parent_run_id)
    children = [
        replace(c, launch=replace(c.launch, resume=interrupted.get(c.config, "")))
        for c in planned
        if c.config not in done
    ]
    print(
        f"sweep {spec.preset} (run {ctx.parent_run_id}): {len(planned)} configurations, "
        f"{len(planned) - len(children)} already finished, {len(children)} to run "
        f"({sum(bool(c.launch.resume) for c in children)} resumed from a snapshot)",
        flush=True,
    )
    return children


def _check_finished(statuses: Mapping[str, str], total: int, run_id: str) -> None:
    failed = [name for name, status in statuses.items() if status != FINISHED]
    if failed:
        raise SweepIncomplete(
            f"{len(failed)} of {total} children did not finish ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); re-run with `mlflow run ... --run-id {run_id}` to retry them"
        )
