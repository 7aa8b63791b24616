"""A sweep's child: what it trains, the run made for it before it starts, the query that finds a
sweep's children, and the true status a child's run is left with once its trainer is gone.

Both executors (the local worker pool, Ray Tune) make a child's run here first, nested under the
parent and tagged as ``mlflow run . -e train`` tags its run, so it carries the sweep's tags from its
first second and looks the same whichever executor trained it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import time
from dataclasses import dataclass

import mlflow
from mlflow.entities import Param, Run
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags
from mlflow.utils.git_utils import get_git_commit

from resnorm import names, snapshots
from resnorm.config import FIELD_TYPES, Launch, TrainConfig
from resnorm.errors import ResnormError
from resnorm.tracking import FAILED, FINISHED, KILLED, RUNNING

TRAINER_SECONDS = 150.0  # how long a re-run waits for an earlier attempt's trainers here to end their runs


@dataclass(frozen=True)
class Child:
    config: TrainConfig
    name: str  # its run's name (planner.child_names: unique in the sweep)
    launch: Launch  # the train entry point's device, mode, resume (an interrupted run of this child), threads
    label: str = ""  # its configuration by the settings that vary in the sweep (the resnorm.config tag)
    round: int = 1  # an adaptive sweep's round that planned it
    run_id: str = ""  # the run an earlier attempt made for it and stopped before its first snapshot: trained into anew


@dataclass(frozen=True)
class SweepContext:
    parent_run_id: str
    experiment_id: str
    preset: str
    project_dir: str


def train_parameters(child: Child) -> dict[str, str]:
    """The MLproject ``train`` parameters of a child."""
    params = {**child.config.as_params(), **child.launch.as_params(), "resume": child.launch.resume}
    params.pop("depth")  # derived from n, not a parameter
    return params


def absolute_tracking_uri() -> str:
    """The tracking URI with a relative SQLite path made absolute, for processes elsewhere."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def create_child_run(client: MlflowClient, ctx: SweepContext, child: Child, extra_tags: dict | None = None) -> str:
    """The child's run, nested under the parent and tagged as ``mlflow run -e train`` would tag it, with
    its configuration's params from the start: whatever becomes of it, the run says what it is (its
    name is only a label)."""
    tags = {
        **(extra_tags or {}),
        mlflow_tags.MLFLOW_PARENT_RUN_ID: ctx.parent_run_id,
        names.TAG_PRESET: ctx.preset,
        mlflow_tags.MLFLOW_USER: getpass.getuser(),
        mlflow_tags.MLFLOW_SOURCE_TYPE: "PROJECT",
        mlflow_tags.MLFLOW_SOURCE_NAME: ctx.project_dir,
        mlflow_tags.MLFLOW_PROJECT_ENTRY_POINT: "train",
        names.TAG_CONFIG: child.label,
    }
    commit = get_git_commit(ctx.project_dir)
    if commit:
        tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit
    run_id = client.create_run(ctx.experiment_id, run_name=child.name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in child.config.as_params().items()])
    return run_id


def sweep_children(client: MlflowClient, experiment_id: str, parent_run_id: str, where: str = "") -> list[Run]:
    """The runs nested under a sweep's parent, oldest first; ``where``: more of a search filter."""
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {where}" if where else "")
    return client.search_runs([experiment_id], query, max_results=50000, order_by=["attributes.start_time ASC"])


def config_of(run: Run) -> TrainConfig | None:
    """The configuration a child's params describe, or None for a run that is not a training of ours, or
    one stopped before its params were logged (its name still says which child it is)."""
    if not set(FIELD_TYPES) <= set(run.data.params):
        return None
    try:
        return TrainConfig.from_params(run.data.params)
    except ResnormError:
        return None


def finished_configs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> set[TrainConfig]:
    done = sweep_children(client, experiment_id, parent_run_id, f"attributes.status = '{FINISHED}'")
    return {c for c in map(config_of, done) if c is not None}


def _has_snapshot(client: MlflowClient, run_id: str) -> bool:
    return snapshots.path_for(run_id).exists() or snapshots.stored(client, run_id)


def unfinished_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """The children that did not finish, once no process here trains one any more: the trainers of an
    attempt that was killed (its workers stop when their sweep is gone) are waited for, up to
    ``TRAINER_SECONDS``, so that a child still being ended is not taken for one to start again."""
    deadline = time.monotonic() + TRAINER_SECONDS
    while True:
        runs = sweep_children(client, experiment_id, parent_run_id, f"attributes.status != '{FINISHED}'")
        held = [r for r in runs if snapshots.is_locked(r.info.run_id)]
        if not held:
            return runs
        if time.monotonic() > deadline:
            run_id = held[0].info.run_id
            raise ResnormError(
                f"run {run_id}, a child of sweep {parent_run_id}, is still being trained by a live process (pid "
                f"{snapshots.holder(run_id)}) that outlived its sweep; stop it, then run the sweep again"
            )
        time.sleep(0.5)


def interrupted_children(
    runs: list[Run], client: MlflowClient, named: dict[str, TrainConfig]
) -> dict[TrainConfig, str]:
    """Of ``runs`` (children that did not finish), those that left a snapshot (in their run's artifacts or
    on this machine): config -> run id (the latest attempt of a config wins). A child killed with its sweep
    stays RUNNING or ends KILLED; one whose process died under a live sweep was marked FAILED. Each
    continues from its snapshot. ``named``: the sweep's children by run name, for a run without params."""
    return {
        c: r.info.run_id
        for r in runs
        if (c := config_of(r) or named.get(r.info.run_name)) is not None and _has_snapshot(client, r.info.run_id)
    }


def restartable_children(
    runs: list[Run], client: MlflowClient, named: dict[str, TrainConfig]
) -> dict[TrainConfig, str]:
    """Of ``runs``, those stopped before their first snapshot (KILLED, or left RUNNING by a sweep killed
    outright, even before its params were logged: known by its name, unique in the sweep): config -> run
    id. Each trains anew into its own run, which holds nothing yet (an epoch's metrics are sent once a
    snapshot holds it), so a sweep stopped mid-round leaves no second run of a child behind."""
    return {
        c: r.info.run_id
        for r in runs
        if r.info.status in (KILLED, RUNNING)
        and (c := config_of(r) or named.get(r.info.run_name)) is not None
        and not _has_snapshot(client, r.info.run_id)
    }


def settle(client: MlflowClient, run_id: str, why: str, status: str | None = None) -> str:
    """The status a child's run is left with once its trainer is gone: as the trainer ended it, or,
    when it is still RUNNING and no live process here holds it (its trainer died, or was killed),
    ``status`` (FAILED unless told) with ``why``. A run another live process trains (a refused resume)
    is left alone."""
    locked = snapshots.is_locked(run_id)  # before the status: a trainer ends its run, then lets go
    now = client.get_run(run_id).info.status
    if now == RUNNING and not locked:
        client.set_tag(run_id, names.TAG_ERROR, why)
        client.set_terminated(run_id, status or FAILED)
        return status or FAILED
    return now


def request(child: Child, run_id: str) -> str:
    """The line that asks a sweep's worker (``resnorm.sweep.worker``) to train ``child`` into ``run_id``."""
    fields = {"run_id": run_id, "config": dataclasses.asdict(child.config), "launch": dataclasses.asdict(child.launch)}
    return json.dumps(fields) + "\n"


def read_request(line: str) -> tuple[TrainConfig, Launch, str]:
    fields = json.loads(line)
    return TrainConfig(**fields["config"]), Launch(**fields["launch"]), fields["run_id"]
