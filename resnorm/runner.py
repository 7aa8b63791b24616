"""A sweep under its parent run: plan it, skip the children that finished, run the rest."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import mlflow
import torch
from mlflow.tracking import MlflowClient

from resnorm import names, snapshots, threads
from resnorm.config import TrainConfig
from resnorm.errors import ConfigError, ResnormError, one_line
from resnorm.executors import (
    FINISHED,
    RAY_CPUS_PER_TRIAL,
    Child,
    SweepContext,
    check_ray_address,
    run_local,
    run_ray,
)
from resnorm.sweep import child_name, config_from_params, plan
from resnorm.tracking import check_tracking_server, log_new_params, use_default_experiment


CPU_PARALLEL = 2  # children at once on the CPU by default (see default_parallel)


class SweepIncomplete(ResnormError):
    """Some children did not finish; re-running into the same parent retries only those."""


def finished_configs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> set[TrainConfig]:
    runs = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
        max_results=50000,
    )
    done = set()
    for run in runs:
        try:
            done.add(config_from_params(run.data.params))
        except ResnormError:  # not a training run of ours; it cannot match a planned config
            continue
    return done


def interrupted_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[TrainConfig, str]:
    """Children that did not finish but left a checkpoint (in their run's artifacts or on this
    machine): config -> run id.

    A child killed with its sweep stays RUNNING; one whose process died under a live sweep was
    marked FAILED. Either continues from its checkpoint rather than starting over.
    """
    runs = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status != 'FINISHED'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],  # the latest attempt of a config wins
    )
    found = {}
    for run in runs:
        if not (snapshots.path_for(run.info.run_id).exists() or snapshots.stored(client, run.info.run_id)):
            continue
        try:
            found[config_from_params(run.data.params)] = run.info.run_id
        except ResnormError:
            continue
    return found


def default_parallel(gpus: int) -> int:
    """One child per GPU; on the CPU two at once, each with half the cores: on 2 cores the digits
    preset ran faster as two 1-thread children than as one 2-thread child (README, "Sweeps")."""
    return gpus or min(CPU_PARALLEL, threads.available())


def children_to_run(client: MlflowClient, experiment_id: str, parent_run_id: str, configs, seeds: int, device: str,
                    mode: str, per_child_threads: int) -> list[Child]:
    """The planned configurations that have not finished, each resuming its interrupted run if it
    has one. Each child's threads: the CPUs Ray gives a trial, or this machine's shared by `parallel`."""
    done = finished_configs(client, experiment_id, parent_run_id)
    interrupted = interrupted_children(client, experiment_id, parent_run_id)
    return [Child(c, child_name(c, seeds), device, interrupted.get(c, ""), mode, per_child_threads)
            for c in configs if c not in done]


def _unquote(value: str) -> str:
    """A param as `mlflow run` logged it, unquoted: it logs string values shell-quoted ("''")."""
    try:
        parts = shlex.split(value)
    except ValueError:
        return value
    return "" if not parts else parts[0] if len(parts) == 1 else value


def _check_same_sweep(existing: Mapping[str, str], params: Mapping[str, str], run_id: str) -> None:
    changed = [
        f"{k}={_unquote(existing[k])!r} (now {v!r})"
        for k, v in params.items()
        if k in existing and _unquote(existing[k]) != v
    ]
    if changed:
        raise ConfigError(f"run {run_id} is a sweep with {', '.join(changed)}; resume it with the same parameters")


def run_sweep(
    project_dir: str,
    preset: str,
    grid: str,
    seeds: int,
    executor: str,
    parallel: int,
    ray_address: str,
    device: str,
    training: Mapping[str, str],
    mode: str = "auto",
    storage_path: str = "",
) -> None:
    configs = plan(preset, grid, seeds, training)
    if executor == "ray":
        check_ray_address(ray_address)
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if device == "cuda" and gpus == 0:
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    parallel = parallel or default_parallel(gpus)
    params = {"preset": preset, "grid": grid, "seeds": str(seeds), "executor": executor, "parallel": str(parallel),
              "ray_address": ray_address, "device": device, "mode": mode, "storage_path": storage_path,
              **{k: str(v) for k, v in training.items()}}

    check_tracking_server()
    use_default_experiment()
    # No run_name here: resuming a run with a name renames it, before the parameters are checked.
    with mlflow.start_run() as parent:
        client, run_id = MlflowClient(), parent.info.run_id
        try:
            existing = client.get_run(run_id).data.params
            # `mlflow run` logs -P values as typed; compare only what it cannot respell.
            _check_same_sweep(existing, {k: params[k] for k in ("preset", "grid", "seeds")}, run_id)
            log_new_params(client, run_id, params)
            client.set_tag(run_id, names.TAG_SWEEP, "true")
            client.set_tag(run_id, names.TAG_PRESET, preset)
            client.update_run(run_id, name=f"sweep-{preset}")
            children = children_to_run(client, parent.info.experiment_id, run_id, configs, seeds, device, mode,
                                       RAY_CPUS_PER_TRIAL if executor == "ray" else threads.share(parallel))
            print(
                f"sweep {preset} (run {run_id}): {len(configs)} configurations, "
                f"{len(configs) - len(children)} already finished, {len(children)} to run "
                f"({sum(bool(c.resume) for c in children)} resumed from a checkpoint)",
                flush=True,
            )
            ctx = SweepContext(run_id, parent.info.experiment_id, preset, project_dir)
            if executor == "ray":
                statuses = run_ray(ctx, children, ray_address, gpus, max(1, parallel // max(1, gpus)), storage_path)
            else:
                statuses = run_local(ctx, children, parallel, gpus)
            failed = [name for name, status in statuses.items() if status != FINISHED]
            if failed:
                raise SweepIncomplete(
                    f"{len(failed)} of {len(children)} children did not finish ({', '.join(failed[:5])}"
                    f"{', ...' if len(failed) > 5 else ''}); re-run with `mlflow run ... --run-id {run_id}` to retry them"
                )
        except BaseException as e:
            client.set_tag(run_id, names.TAG_ERROR, one_line(e))
            raise
