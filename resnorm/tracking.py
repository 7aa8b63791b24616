"""MLflow around the runs, with nothing of training in it: is the server there, which run and
experiment, failing a run with its reason, params that `mlflow run` may have logged first.
The run a training writes is ``resnorm.runlog``'s; the registry's alias is ``resnorm.registry``'s."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator

import mlflow
from mlflow.entities import Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from resnorm import names
from resnorm.config import FIELD_TYPES, TrainConfig
from resnorm.errors import ConfigError, TrackingUnavailable, one_line

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def server_answers(uri: str, timeout: float = 5.0) -> str | None:
    """None when the tracking URI answers (any HTTP response will do), else why not.

    Only ``http(s)://`` URIs are probed; a local store (``sqlite:///...``) always answers.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:  # it answered (e.g. 401 from an auth server)
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return str(getattr(reason, "strerror", None) or reason)
    return None


def check_tracking_server(timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking server does not answer (MLflow's own client
    would retry for minutes before saying anything), or when the environment asks MLflow for what
    would silently record nothing (``system_metrics_interval``): every entry point calls this before
    any work, a sweep before its parent run."""
    system_metrics_interval()
    uri = mlflow.get_tracking_uri()
    why = server_answers(uri, timeout)
    if why is not None:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} does not answer ({why}); start the server or set MLFLOW_TRACKING_URI to one "
            "that runs"
        )
    check_store(uri, timeout)


STORE_SCHEMES = "sqlite:///path.db, postgresql://, mysql://, mssql://, http(s)://server"


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail in one line, before any work, when the store cannot be used: a scheme MLflow does not
    know, MLflow 3's refused file store, or a server that does not know this user (HTTP 401).

    A user the server knows but denies an experiment (403) is refused when the run is made: which
    experiment that is, and whether the user may write to it, is not known here."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        return _check_access(uri, timeout)
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - MLflow raises several unrelated types for a URI it cannot use
        raise TrackingUnavailable(_store_refused(uri, scheme, e)) from None


def _store_refused(uri: str, scheme: str, error: Exception) -> str:
    text = str(error)
    if "unsupported URI" in text or "Could not find a registered" in text:
        hint = " (PostgreSQL is postgresql://, not postgres://)" if scheme == "postgres" else ""
        return f"tracking URI {uri!r}: MLflow has no store for the scheme {scheme!r}{hint}; use one of {STORE_SCHEMES}"
    if "filesystem tracking backend" in text:
        return (
            f"tracking URI {uri!r} is a file store, which MLflow 3 refuses; use a database such as "
            "sqlite:///mlflow.db (`mlflow migrate-filestore` moves old runs over), or set MLFLOW_ALLOW_FILE_STORE=true"
        )
    return f"tracking URI {uri!r} cannot be used: {one_line(error)[:300]}"


def _check_access(uri: str, timeout: float) -> None:
    """One authenticated request as MLflow's client would make it; 401 becomes one line."""
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    )
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            who = f"the credentials of user {user!r}" if user is not None else "a client without credentials"
            raise TrackingUnavailable(
                f"tracking server {uri!r} refuses {who} (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account of that server"
            ) from None
    except (urllib.error.URLError, OSError):
        pass  # check_tracking_server has just seen it answer; a blip here is for MLflow's retries


# MLflow's own rule for a run id (mlflow.utils.validation): checked here so that a malformed one is
# one line naming it, not MLflow's raw error.
RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")


def check_run_id(run_id: str, what: str) -> None:
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"{what} {run_id!r} is not a run id (letters, digits, _ and -, such as 0123456789abcdef0123456789abcdef)"
        )


def check_resumable_run(run_id: str) -> Run:
    """The run to resume, which must exist, not deleted, in this store."""
    check_run_id(run_id, "resume")
    uri = mlflow.get_tracking_uri()
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"resume {run_id!r}: the tracking store {uri!r} has no such run; set MLFLOW_TRACKING_URI to the store "
            "it was started in"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(
            f"resume {run_id!r}: the run is deleted in {uri!r}; restore it first (`mlflow runs restore --run-id "
            f"{run_id}`) or start a new run"
        )
    return run


TRAIN_ENTRY_POINTS = ("train", "main")  # the MLproject's names of the train entry point


def check_own_run(run_id: str, cfg: TrainConfig | None) -> None:
    """Refuse a run made for this training (``MLFLOW_RUN_ID``) that is not one: FINISHED, made for
    another entry point or by hand (a variable inherited from a parent process, MLflow issue
    15713), or holding the params of another configuration than ``cfg`` (None: not compared). Training
    into it would rewrite a finished run, or make one run two configurations."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    entry = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    unset = "unset MLFLOW_RUN_ID (it is inherited from the process that started this one) to train into a new run"
    if run.info.status == FINISHED:
        raise ConfigError(f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, which has FINISHED; {unset}")
    if entry not in TRAIN_ENTRY_POINTS:
        made = f"for the {entry!r} entry point" if entry else "outside `mlflow run` and sweeps"
        raise ConfigError(
            f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, made {made}, not for a training; {unset}"
        )
    params = {k: unquote_param(v) for k, v in run.data.params.items()}
    if cfg is not None and set(FIELD_TYPES) <= set(params):
        try:
            theirs = TrainConfig.from_params(params)
        except ConfigError:
            theirs = None
        if theirs != cfg:
            raise ConfigError(
                f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, whose params describe another "
                f"configuration than {cfg.run_name()!r}; {unset}"
            )


def check_own_sweep_run(run_id: str) -> None:
    """Refuse a run made for this sweep (``MLFLOW_RUN_ID``) that is not one: a sweep's parent (a
    re-run continues it) or a fresh run that `mlflow run -e sweep` made. A training run, finished or
    not, or a run of another entry point would become a sweep's parent."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    if run.data.tags.get(names.TAG_SWEEP) == "true":
        return
    entry = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    if entry == "sweep" and run.info.status == RUNNING and names.TAG_DEVICE not in run.data.tags:
        return
    made = f"for the {entry!r} entry point" if entry else "outside `mlflow run`"
    raise ConfigError(
        f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r} ({run.info.status}, made {made}), "
        "which is not a sweep; unset MLFLOW_RUN_ID (it is inherited from the process that started this "
        "one) to start a new sweep, or name a sweep's parent run to continue it"
    )


# What a job writes on the run it takes (a training's device, a sweep's mark, an analysis's sweep): a run that
# carries one was taken by a job already, whatever made it.
TAKEN = (names.TAG_DEVICE, names.TAG_SWEEP, names.TAG_ANALYSIS_OF)


def made_for(run: Run, entry: str) -> bool:
    """Whether ``run`` is one made for a job of the entry point ``entry`` and not yet taken: RUNNING, tagged
    with that entry point (as `mlflow run -e ENTRY` and a sweep tag theirs) and carrying nothing a job
    writes on its run. A notebook's run, another entry point's, or one a job has taken is not."""
    entries = TRAIN_ENTRY_POINTS if entry in TRAIN_ENTRY_POINTS else (entry,)
    return (
        run.info.status == RUNNING
        and run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT) in entries
        and not any(t in run.data.tags for t in TAKEN)
    )


def check_own_job_run(run_id: str, entry: str) -> None:
    """Refuse a run made for this job (``MLFLOW_RUN_ID``) that is not one made for the ``entry`` entry point
    (``made_for``): a notebook's run or a sweep's parent inherited from the process that started this one
    would otherwise be renamed, written into and ended by it."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    if made_for(run, entry):
        return
    made = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    what = f"made for the {made!r} entry point" if made else "made outside `mlflow run`"
    raise ConfigError(
        f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r} ({run.info.status}, {what}), which is not a "
        f"run made for this {entry}; unset MLFLOW_RUN_ID (it is inherited from the process that started this "
        f"one) to let {entry} make its own run"
    )


def _existing_run(run_id: str, what: str) -> Run:
    check_run_id(run_id, what)
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(f"{what}={run_id} names no run in the tracking store {mlflow.get_tracking_uri()!r}") from None


def mark_model_training(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training unless it says what it is (a writer that lost the race finds it set)."""
    if names.TAG_EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, names.TAG_EXPERIMENT_KIND, names.MODEL_TRAINING)
    except MlflowException:
        if names.TAG_EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
            raise


# A job that waits on the tracking server for nothing but its own calls (analyze) lets MLflow's HTTP client
# retry a little, not for minutes (7 retries with a backoff factor of 2 by default): a server that died after
# the start-up check then costs seconds and one line. Each is the user's to set otherwise.
BOUNDED_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


@contextlib.contextmanager
def bounded_requests(what: str) -> Iterator[None]:
    """MLflow's requests within the block retry a few seconds at most (``BOUNDED_REQUESTS``, unless the
    environment says otherwise); a tracking server that stops answering ends ``what`` with one line naming
    it (``TrackingUnavailable``), not MLflow's error."""
    for key, value in BOUNDED_REQUESTS.items():
        os.environ.setdefault(key, value)
    try:
        yield
    except Exception as e:
        uri = mlflow.get_tracking_uri()
        why = server_answers(uri)
        if why is None:
            raise
        raise TrackingUnavailable(
            f"tracking URI {uri!r} stopped answering during {what} ({why}); {one_line(e)[:200]}; start the server "
            "and run it again"
        ) from None


def give_up_quickly() -> None:
    """The server is away: let MLflow's remaining calls on the way out fail at once, not retry."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"


def use_default_experiment(name: str = names.EXPERIMENT) -> None:
    """Log to experiment ``name`` unless the environment names one (``mlflow run`` does)."""
    if not any(k in os.environ for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")):
        experiment = mlflow.set_experiment(name)
        # When another process creates the experiment at the same moment, MLflow's set_experiment
        # returns it without making it the active one, and the run would land in Default. Setting
        # it by id always activates it.
        mlflow.set_experiment(experiment_id=experiment.experiment_id)


def record_failure(client: MlflowClient, run_id: str, reason: str, error: BaseException | None = None) -> None:
    """The one-line ``reason`` in the run's ``resnorm.error`` tag and, for an error (not an
    interrupt), its full traceback as the ``error/traceback.txt`` artifact."""
    client.set_tag(run_id, names.TAG_ERROR, reason)
    if error is None or isinstance(error, (KeyboardInterrupt, SystemExit)):
        return
    try:
        client.log_text(run_id, "".join(traceback.format_exception(error)), names.TRACEBACK_ARTIFACT)
    except Exception:  # noqa: BLE001 - the reason is in the tag already; the traceback is a bonus
        pass


def fail_pending_run(
    run_id: str,
    reason: str,
    error: BaseException | None = None,
    interrupted: bool = False,
    entry: str | None = None,
) -> None:
    """End ``run_id``, made for this process, FAILED (KILLED when ``interrupted``) with ``reason``, if it is
    still RUNNING. ``entry``: the job's entry point when the run is only named by ``MLFLOW_RUN_ID``, which
    may be inherited: then it is ended only if it was made for that entry point and not yet taken
    (``made_for``); None when the caller made the run for this job (a sweep's worker).

    For errors found before the job opens its run (bad parameters, bad data), so the run made for
    it is not left RUNNING without a word of why; a run the job did not make is never ended.
    """
    if server_answers(mlflow.get_tracking_uri()) is not None:
        return
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status != RUNNING or (entry is not None and not made_for(run, entry)):
        return
    record_failure(client, run_id, reason, error)
    client.set_terminated(run_id, KILLED if interrupted else FAILED)


def unquote_param(value: str) -> str:
    """A param as `mlflow run` logged it, unquoted: it logs string values shell-quoted ("''")."""
    try:
        parts = shlex.split(value)
    except ValueError:
        return value
    return "" if not parts else parts[0] if len(parts) == 1 else value


def log_new_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log the params the run does not have yet, in batches.

    `mlflow run` has already logged the -P values in the user's spelling ("0.10"); logging the
    same key again with another spelling fails, so only the missing keys are sent.
    """
    existing = client.get_run(run_id).data.params
    missing = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(missing), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[i : i + MAX_PARAMS_PER_BATCH])


SYNC_TIMEOUT = "RESNORM_SYNC_TIMEOUT"  # seconds the end of a run waits for the tracking server (300)


def sync_timeout() -> float:
    """``RESNORM_SYNC_TIMEOUT`` in seconds (default 300); a value that is not a number of seconds is refused."""
    text = os.environ.get(SYNC_TIMEOUT, "300")
    with contextlib.suppress(ValueError):
        if 0 <= (seconds := float(text)) < float("inf"):
            return seconds
    raise ConfigError(f"{SYNC_TIMEOUT}={text!r} is not a number of seconds >= 0; unset it or give e.g. 300")


SYSTEM_METRICS_INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"  # MLflow's, in seconds
# A training run's system metrics are sampled every 2 s unless the user says otherwise: MLflow's
# 10 s would record nothing for a run shorter than that, and a quick sweep's children are.
SYSTEM_METRICS_SECONDS = 2.0
MIN_SYSTEM_METRICS_SECONDS = 0.5  # MLflow takes 0 as its 10 s and samples -1 about 80 times a second


def system_metrics_interval() -> float:
    """``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` in seconds (default 2); a value that is not a
    number of seconds >= 0.5 is refused (MLflow would record nothing, or sample in a busy loop)."""
    text = os.environ.get(SYSTEM_METRICS_INTERVAL)
    if text is None:
        return SYSTEM_METRICS_SECONDS
    with contextlib.suppress(ValueError):
        if MIN_SYSTEM_METRICS_SECONDS <= (seconds := float(text)) < float("inf"):
            return seconds
    raise ConfigError(
        f"{SYSTEM_METRICS_INTERVAL}={text!r} is not a number of seconds >= {MIN_SYSTEM_METRICS_SECONDS:g} (how "
        f"often MLflow samples a run's system metrics); unset it for {SYSTEM_METRICS_SECONDS:g} s or give e.g. 5"
    )
