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
from dataclasses import dataclass

import mlflow
from mlflow.entities import Param, Run
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags
from mlflow.utils.git_utils import get_git_commit

from resnorm import names, snapshots
from resnorm.config import Launch, TrainConfig
from resnorm.tracking import FAILED, RUNNING


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
