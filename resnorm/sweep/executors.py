"""Run a sweep's children: here, one after another or a few at a time (``local``), or as
Ray Tune trials on a Ray cluster (``ray``).

Every child is an ordinary run of the MLproject's ``train`` entry point, started with
``mlflow.projects.run`` into a run created here first, so that it carries the sweep's tags
from its first second (nested under the parent in the UI even while it trains) and looks the
same whichever executor started it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import mlflow
import mlflow.projects
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags
from mlflow.utils.git_utils import get_git_commit

from resnorm import names, snapshots
from resnorm.config import Launch, TrainConfig
from resnorm.errors import ConfigError, ResnormError
from resnorm.tracking import FAILED, FINISHED, RUNNING

EXECUTORS = ("local", "ray")
RAY_MAX_FAILURES = 3  # a trial that fails (its node lost, its process killed) is retried this often
RAY_CPUS_PER_TRIAL = 1  # each trial asks Ray for one CPU and trains with one thread


@dataclass(frozen=True)
class Child:
    config: TrainConfig
    name: str
    launch: Launch  # the train entry point's device, mode, resume (an interrupted run of this child), threads


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
    """The child's run, nested under the parent and tagged as ``mlflow run -e train`` would tag it."""
    tags = {
        **(extra_tags or {}),
        mlflow_tags.MLFLOW_PARENT_RUN_ID: ctx.parent_run_id,
        names.TAG_PRESET: ctx.preset,
        mlflow_tags.MLFLOW_SOURCE_TYPE: "PROJECT",
        mlflow_tags.MLFLOW_SOURCE_NAME: ctx.project_dir,
        mlflow_tags.MLFLOW_PROJECT_ENTRY_POINT: "train",
    }
    commit = get_git_commit(ctx.project_dir)
    if commit:
        tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit
    return client.create_run(ctx.experiment_id, run_name=child.name, tags=tags).info.run_id


@contextlib.contextmanager
def _visible_gpu(gpu: int | None) -> Iterator[None]:
    """Show only ``gpu`` to a child process started inside the block (no change without one)."""
    if gpu is None:
        yield
        return
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def start_child(client: MlflowClient, ctx: SweepContext, child: Child, gpu: int | None = None, run_id: str = "",
                extra_tags: dict | None = None):
    """Create the child's run (or reuse ``run_id`` or its interrupted one) and start ``train`` in
    it; returns MLflow's ``SubmittedRun``."""
    run_id = run_id or child.launch.resume or create_child_run(client, ctx, child, extra_tags)
    with _visible_gpu(gpu):
        return mlflow.projects.run(
            ctx.project_dir,
            entry_point="train",
            parameters=train_parameters(child),
            experiment_id=ctx.experiment_id,
            env_manager="local",
            synchronous=False,
            run_id=run_id,
        )


def close_child(client: MlflowClient, submitted) -> str:
    """Wait for a child; a process that died without closing its run gets it marked FAILED, unless
    the run is being trained by another live process here (its resume was refused: leave it alone)."""
    submitted.wait()
    _wait_for_trainer(submitted)
    locked = snapshots.is_locked(submitted.run_id)  # before the status: a trainer ends its run, then lets go
    run = client.get_run(submitted.run_id)
    if run.info.status == RUNNING and not locked:
        client.set_tag(submitted.run_id, names.TAG_ERROR, "the training process ended without closing its run")
        client.set_terminated(submitted.run_id, FAILED)
        return FAILED
    return run.info.status


def _wait_for_trainer(submitted, timeout: float = 120.0) -> None:
    """A stopped child's shell can end before the python it started (SIGTERM reaches the whole
    group): wait, a bounded time, until that python has closed its run and let go of its lock.
    A lock held by a process outside the child's session (a refused resume) is not waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = snapshots.holder(submitted.run_id)
        try:
            if not pid or os.getsid(pid) != submitted.command_proc.pid:  # `mlflow run` starts it with setsid
                return
        except ProcessLookupError:
            return
        time.sleep(0.1)


def run_local(ctx: SweepContext, children: Sequence[Child], parallel: int = 1, gpus: int = 0) -> dict[str, str]:
    """Children as subprocesses, ``parallel`` at a time; with GPUs, child i sees GPU i % gpus.

    Interrupted (SIGTERM, Ctrl-C), it stops the running children (SIGTERM to each one's process
    group: they end KILLED, resumable) and waits for them before passing the interrupt on.
    """
    client = MlflowClient()
    statuses: dict[str, str] = {}
    running: list[tuple[Child, object]] = []
    queue = list(children)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                gpu = (len(children) - len(queue)) % gpus if gpus else None
                child = queue.pop(0)
                running.append((child, start_child(client, ctx, child, gpu)))
            done = [(c, s) for c, s in running if s.get_status() != RUNNING]
            if not done:
                time.sleep(0.5)
            for child, submitted in done:
                running.remove((child, submitted))
                statuses[child.name] = close_child(client, submitted)
                print(f"[{len(statuses)}/{len(children)}] {child.name}: {statuses[child.name]} "
                      f"(run {submitted.run_id})", flush=True)
    except BaseException:
        for _, submitted in running:
            submitted.cancel()
            close_child(client, submitted)
        raise
    return statuses


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
        raise ConfigError(f"ray address {address!r} does not answer ({e.strerror or e}); start Ray there or leave it empty") from None


def trial_run(client: MlflowClient, ctx: SweepContext, trial_id: str) -> str:
    """The run an earlier attempt of Tune trial ``trial_id`` made under this sweep ("" if none)."""
    runs = client.search_runs(
        [ctx.experiment_id],
        f"tags.mlflow.parentRunId = '{ctx.parent_run_id}' and tags.`{names.TAG_TRIAL}` = '{trial_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else ""


def _ray_trial(trial_config: dict) -> None:
    """One Ray Tune trial: one child, from the worker's copy of the project.

    A retried trial (its node was lost, its process killed) finds the run its earlier attempt made
    and resumes it from the snapshot in the run's artifact store: same run, every epoch once. A
    training process that died without closing its run fails the trial, so Tune retries it.
    """
    from ray import tune

    spec = trial_config["spec"]
    # The project as Ray unpacked it on this worker (Tune runs trials from a trial folder).
    project_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # resnorm/sweep/ -> root
    ctx = SweepContext(**{**spec["ctx"], "project_dir": project_dir})
    fields = spec["child"]
    child = Child(TrainConfig(**fields["config"]), fields["name"], Launch(**fields["launch"]))
    client = MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    run_id = child.launch.resume or trial_run(client, ctx, trial_id)
    if run_id and client.get_run(run_id).info.status == FINISHED:  # done; only the report was lost
        tune.report({"finished": 1})
        return
    if run_id and snapshots.stored(client, run_id):
        child = dataclasses.replace(child, launch=dataclasses.replace(child.launch, resume=run_id))
    submitted = start_child(client, ctx, child, run_id=run_id, extra_tags={names.TAG_TRIAL: trial_id})
    submitted.wait()
    _wait_for_trainer(submitted)
    status = client.get_run(submitted.run_id).info.status
    if status == RUNNING:
        raise ResnormError(f"{child.name}: the training process ended without closing run {submitted.run_id}")
    tune.report({"finished": int(status == FINISHED)})


def storage_for(storage_path: str) -> str:
    """Tune's storage: a URI (``s3://...``) as given, a path made absolute (it must be one every
    node reaches: a shared folder on a cluster of several machines)."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


def run_ray(
    ctx: SweepContext, children: Sequence[Child], address: str = "", gpus: int = 0, per_gpu: int = 1,
    storage_path: str = "",
) -> dict[str, str]:
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
    ray.init(address=address or None, runtime_env=runtime_env, include_dashboard=False, logging_level="WARNING")
    try:
        specs = [{"ctx": asdict(ctx), "child": asdict(c)} for c in children]  # plain dicts travel to the workers
        cpu = RAY_CPUS_PER_TRIAL
        resources = {"cpu": cpu, "gpu": 1 / per_gpu} if gpus else {"cpu": cpu}
        with contextlib.ExitStack() as stack:
            storage = storage_for(storage_path) if storage_path else stack.enter_context(tempfile.TemporaryDirectory())
            tuner = tune.Tuner(
                tune.with_resources(_ray_trial, resources),
                param_space={"spec": tune.grid_search(specs)},
                run_config=tune.RunConfig(
                    storage_path=storage, name=f"resnorm-sweep-{ctx.parent_run_id}-{int(time.time())}", verbose=0,
                    failure_config=tune.FailureConfig(max_failures=RAY_MAX_FAILURES),
                ),
            )
            tuner.fit()
    finally:
        ray.shutdown()
    return ray_statuses(MlflowClient(), ctx, children)


def ray_statuses(client: MlflowClient, ctx: SweepContext, children: Sequence[Child]) -> dict[str, str]:
    """Each child's status after the trials: its latest run's; one still RUNNING (its trial ran out
    of retries) is marked FAILED, and keeps its snapshot for a re-run of the sweep."""
    runs = client.search_runs(
        [ctx.experiment_id], f"tags.mlflow.parentRunId = '{ctx.parent_run_id}'", max_results=10000
    )
    latest = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        try:
            latest[TrainConfig.from_params(r.data.params)] = r
        except ResnormError:  # killed before it logged its params: a later attempt has them
            continue
    for r in latest.values():
        if r.info.status == RUNNING:
            client.set_tag(r.info.run_id, names.TAG_ERROR,
                           f"its Ray trial failed {RAY_MAX_FAILURES + 1} times; re-run the sweep to resume it")
            client.set_terminated(r.info.run_id, FAILED)
    found = {c.name: latest.get(c.config) for c in children}
    return {name: r.info.status if r is not None and r.info.status != RUNNING else FAILED for name, r in found.items()}
