"""The Ray executor: a sweep's children as Ray Tune trials on a Ray cluster (one machine or many).

Each trial asks Ray for one CPU (and a share of a GPU where there are GPUs) and trains its child in
a worker process of its own (``resnorm.sweep.worker``, as the local pool does), from the worker
node's copy of the project. A trial whose node is lost is retried on another node and resumes its
child's run from the snapshot in the run's artifact store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict

from mlflow.tracking import MlflowClient

from resnorm import PROJECT_ROOT, names, snapshots
from resnorm.config import Launch, TrainConfig
from resnorm.errors import ConfigError, ResnormError
from resnorm.sweep.child import Child, SweepContext, absolute_tracking_uri, create_child_run, sweep_children
from resnorm.sweep.workers import Worker
from resnorm.tracking import FAILED, FINISHED, RUNNING

RAY_MAX_FAILURES = 3  # a trial that fails (its node lost, its process killed) is retried this often
RAY_CPUS_PER_TRIAL = 1  # each trial asks Ray for one CPU and trains with one thread


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the address in the message, when nothing answers at host:port."""
    if address in ("", "auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray address {address!r} is not host:port (or ray://host:port, auto, local)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"ray address {address!r} does not answer ({e.strerror or e}); start Ray there or leave it empty"
        ) from None


def trial_run(client: MlflowClient, ctx: SweepContext, trial_id: str) -> str:
    """The run an earlier attempt of Tune trial ``trial_id`` made under this sweep ("" if none)."""
    runs = sweep_children(client, ctx.experiment_id, ctx.parent_run_id, f"tags.`{names.TAG_TRIAL}` = '{trial_id}'")
    return runs[-1].info.run_id if runs else ""


def _ray_trial(trial_config: dict) -> None:
    """One Ray Tune trial: one child, trained by a worker process from this node's copy of the project.

    A retried trial (its node was lost, its process killed) finds the run its earlier attempt made
    and resumes it from the snapshot in the run's artifact store: same run, every epoch once. A
    worker that died without closing its run fails the trial, so Tune retries it.
    """
    from ray import tune

    spec = trial_config["spec"]
    # The project as Ray unpacked it on this worker (Tune runs trials from a trial folder).
    ctx = SweepContext(**{**spec["ctx"], "project_dir": str(PROJECT_ROOT)})
    fields = spec["child"]
    child = Child(
        TrainConfig(**fields["config"]),
        fields["name"],
        Launch(**fields["launch"]),
        fields["label"],
        fields["round"],
        fields["run_id"],
    )
    client = MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    run_id = child.launch.resume or child.run_id or trial_run(client, ctx, trial_id)
    if run_id and client.get_run(run_id).info.status == FINISHED:  # done; only the report was lost
        tune.report({"finished": 1})
        return
    if run_id and snapshots.stored(client, run_id):
        child = dataclasses.replace(child, launch=dataclasses.replace(child.launch, resume=run_id))
    run_id = run_id or create_child_run(client, ctx, child, {names.TAG_TRIAL: trial_id})
    # Ray has set the trial's CUDA_VISIBLE_DEVICES already; a new process, not a fork (see Worker)
    worker = Worker(ctx.project_dir, gpu=None, forked=False)
    try:
        worker.give(child, run_id)
        answered = worker.read_reply() is not None
    finally:
        worker.close()
    status = client.get_run(run_id).info.status
    if not answered or status == RUNNING:
        raise ResnormError(f"{child.name}: the training process ended without closing run {run_id}")
    tune.report({"finished": int(status == FINISHED)})


def storage_for(storage_path: str) -> str:
    """Tune's storage: a URI (``s3://...``) as given, a path made absolute (it must be one every
    node reaches: a shared folder on a cluster of several machines)."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


def run_ray(
    ctx: SweepContext,
    children: Sequence[Child],
    address: str = "",
    gpus: int = 0,
    per_gpu: int = 1,
    storage_path: str = "",
) -> dict[TrainConfig, str]:
    """Children as Ray Tune trials, each asking for one CPU and, where there are GPUs, a
    ``1 / per_gpu`` share of one (a small model leaves a big GPU idle: several trainings at once
    can raise the total rate; ``bench`` and the sweep's own timings tell).

    With no ``address``, Ray starts on this machine. The project folder travels to the workers as
    Ray's ``working_dir``; the tracking URI goes with them, so it must be one every worker reaches
    (an ``mlflow server`` for a cluster of several machines). A failed trial is retried
    ``RAY_MAX_FAILURES`` times, resuming its run. Tune keeps its own state under ``storage_path``
    (empty: a temporary folder on this machine, removed afterwards).
    """
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray: pip install 'ray[tune]' (or pip install -e '.[ray]')") from None

    check_ray_address(address)
    excludes = [".git", "mlflow.db", "mlruns", "mlartifacts", ".whl", "**/__pycache__"]
    runtime_env = {
        "working_dir": ctx.project_dir,
        "excludes": excludes,
        "env_vars": {"MLFLOW_TRACKING_URI": absolute_tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true"},
    }
    ray.init(address=address or None, runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING)
    try:
        specs = [{"ctx": asdict(ctx), "child": asdict(c)} for c in children]  # plain dicts travel to the workers
        cpu = RAY_CPUS_PER_TRIAL
        resources: dict[str, float] = {"cpu": cpu, "gpu": 1 / per_gpu} if gpus else {"cpu": cpu}
        with contextlib.ExitStack() as stack:
            storage = storage_for(storage_path) if storage_path else stack.enter_context(tempfile.TemporaryDirectory())
            tuner = tune.Tuner(
                tune.with_resources(_ray_trial, resources),
                param_space={"spec": tune.grid_search(specs)},
                run_config=tune.RunConfig(
                    storage_path=storage,
                    name=f"resnorm-sweep-{ctx.parent_run_id}-{int(time.time())}",
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=RAY_MAX_FAILURES),
                ),
            )
            tuner.fit()
    finally:
        ray.shutdown()
    return ray_statuses(MlflowClient(), ctx, children)


def ray_statuses(client: MlflowClient, ctx: SweepContext, children: Sequence[Child]) -> dict[TrainConfig, str]:
    """Each child's status after the trials, by configuration: its latest run's; one still RUNNING (its
    trial ran out of retries) is marked FAILED, and keeps its snapshot for a re-run of the sweep."""
    runs = sweep_children(client, ctx.experiment_id, ctx.parent_run_id)
    latest = {}
    for r in runs:
        try:
            latest[TrainConfig.from_params(r.data.params)] = r
        except ResnormError:  # not a training run of ours (every child is made with its params)
            continue
    for r in latest.values():
        if r.info.status == RUNNING:
            client.set_tag(
                r.info.run_id,
                names.TAG_ERROR,
                f"its Ray trial failed {RAY_MAX_FAILURES + 1} times; re-run the sweep to resume it",
            )
            client.set_terminated(r.info.run_id, FAILED)
    found = {c.config: latest.get(c.config) for c in children}
    return {cfg: r.info.status if r is not None and r.info.status != RUNNING else FAILED for cfg, r in found.items()}
