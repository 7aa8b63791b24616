"""A sweep under its parent run: plan it, skip the children that finished, resume the interrupted
ones, run the rest (in rounds, for an adaptive sweep), and end the parent with a true status."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import mlflow
import torch
from mlflow.tracking import MlflowClient

from resnorm import PROJECT_ROOT, machine, names
from resnorm.config import TrainConfig, resolve_device
from resnorm.errors import ConfigError, Interrupted, ResnormError, one_line
from resnorm.jobruns import check_own_sweep_run
from resnorm.sweep import forkserver, lease
from resnorm.sweep.child import (
    Child,
    SweepContext,
    finished_configs,
    interrupted_children,
    restartable_children,
    unfinished_children,
)
from resnorm.sweep.planner import plan
from resnorm.sweep.pool import Pool
from resnorm.sweep.raytune import RAY_CPUS_PER_TRIAL, check_ray_address, run_ray
from resnorm.sweep.record import earlier_rounds, new_round, plan_record, planned_children
from resnorm.sweep.spec import SweepSpec, check_same_sweep
from resnorm.tracking import (
    FINISHED,
    KILLED,
    check_tracking_server,
    log_new_params,
    mark_model_training,
    use_default_experiment,
)

CPU_PARALLEL = 2  # children at once on the CPU by default (see default_parallel)
EXECUTORS = ("local", "ray")


class SweepIncomplete(ResnormError):
    """Some children did not finish; re-running into the same parent retries only those."""


# What an adaptive sweep asks after each round: the configurations (with their seeds) of the next round,
# none to stop. The entry point gives it (analysis.adaptive.next_round): the claims live in analysis/.
NextRound = Callable[[MlflowClient, str, Sequence[Child], SweepSpec], list[TrainConfig]]


def default_parallel(gpus: int) -> int:
    """One child per GPU; on the CPU two at once, each with half the cores: on 2 cores the digits
    preset ran 1.5x faster as two 1-thread children than as one 2-thread child (README, "Sweeps")."""
    return gpus or min(CPU_PARALLEL, machine.available_cpus())


def run_sweep(spec: SweepSpec, next_round: NextRound | None = None) -> None:
    """Run ``spec`` as one parent run (or continue the one `mlflow run --run-id` names). An adaptive
    sweep needs ``next_round``, which says after each round what the next one trains.

    A parent named by ``MLFLOW_RUN_ID`` is checked before anything is written to it: it must be a sweep's
    parent (or fresh from `mlflow run -e sweep`), ask for the same sweep, and be held by no live sweep
    (``lease``: the store arbitrates, wherever that sweep runs). A refusal leaves it as it was."""
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
    client = MlflowClient()
    pointer = os.environ.get("MLFLOW_RUN_ID")  # made by `mlflow run`, or the parent a re-run continues
    held = None
    if pointer:
        check_own_sweep_run(pointer)
        check_same_sweep(client.get_run(pointer).data.params, spec.params(parallel), pointer)
        held = lease.acquire(client, pointer)
    else:
        use_default_experiment()
    try:
        if spec.executor == "local":
            forkserver.start()  # its imports overlap the setup below (the entry point started it earlier still)
        # A new parent is made named and marked a sweep in one call: killed a moment later, it is a sweep a
        # re-run can continue. A parent that exists keeps its name until it is checked to be one.
        opened = {"run_id": pointer} if pointer else {"run_name": f"sweep-{spec.preset}", "tags": _parent_tags(spec)}
        with mlflow.start_run(**opened) as parent:
            held = held or lease.acquire(client, parent.info.run_id)
            _run_under(parent, spec, parallel, gpus, configs, next_round)
    finally:
        if held is not None:
            held.release()


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
        _check_stored(client, ctx, planned)
        if not spec.adaptive or next_round is None:  # seeds fixed in advance: one round
            return
        more = next_round(client, ctx.parent_run_id, planned, spec)
        if not more:
            return
        planned = planned + new_round(spec, planned, more, per_child)
        print(f"round {planned[-1].round}: {len(more)} more children, for the claims still open", flush=True)


def _parent_tags(spec: SweepSpec) -> dict[str, str]:
    return {names.TAG_SWEEP: "true", names.TAG_PRESET: spec.preset}


def _open_parent(client: MlflowClient, run_id: str, spec: SweepSpec, parallel: int) -> None:
    log_new_params(client, run_id, spec.params(parallel))
    for key, value in _parent_tags(spec).items():
        client.set_tag(run_id, key, value)
    if names.TAG_ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, names.TAG_ERROR)  # an earlier attempt's reason; this one will say its own
    client.update_run(run_id, name=f"sweep-{spec.preset}")


def _to_run(client: MlflowClient, ctx: SweepContext, spec: SweepSpec, planned: list[Child]) -> list[Child]:
    """The planned children that have not finished, each resuming its interrupted run if it has one."""
    done = finished_configs(client, ctx.experiment_id, ctx.parent_run_id)
    unfinished = unfinished_children(client, ctx.experiment_id, ctx.parent_run_id)
    named = {c.name: c.config for c in planned}  # a child made but stopped before its params is known by its name
    interrupted = interrupted_children(unfinished, client, named)
    restart = restartable_children(unfinished, client, named)
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


def _check_stored(client: MlflowClient, ctx: SweepContext, planned: Sequence[Child]) -> None:
    """Every planned child has a FINISHED run in the store (not only in what its trainer answered): a child
    whose run was deleted meanwhile is named, and trained again by a re-run, never taken for a round
    that is complete."""
    done = finished_configs(client, ctx.experiment_id, ctx.parent_run_id)
    missing = [c.name for c in planned if c.config not in done]
    if missing:
        raise SweepIncomplete(
            f"{len(missing)} planned children have no FINISHED run in the tracking store ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}: deleted?); re-run with `mlflow run ... --run-id "
            f"{ctx.parent_run_id}` to train them again"
        )
