"""MLflow around the runs, with nothing of training in it: is the server there, which experiment, params
that `mlflow run` may have logged first, the run statuses. Which run a job may take and end is
``resnorm.jobruns``'; how long a job waits for the server, ``resnorm.waiting``'s; the run a training
writes is ``resnorm.runlog``'s; the registry's alias is ``resnorm.registry``'s."""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import urllib.error
import urllib.request

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm import names
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


def mark_model_training(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training unless it says what it is (a writer that lost the race finds it set)."""
    if names.TAG_EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, names.TAG_EXPERIMENT_KIND, names.MODEL_TRAINING)
    except MlflowException:
        if names.TAG_EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
            raise


def use_default_experiment(name: str = names.EXPERIMENT) -> None:
    """Log to experiment ``name`` unless the environment names one (``mlflow run`` does)."""
    if not any(k in os.environ for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")):
        experiment = mlflow.set_experiment(name)
        # When another process creates the experiment at the same moment, MLflow's set_experiment
        # returns it without making it the active one, and the run would land in Default. Setting
        # it by id always activates it.
        mlflow.set_experiment(experiment_id=experiment.experiment_id)


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
