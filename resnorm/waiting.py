"""How long a job waits for the tracking server: MLflow's own client retries a refused connection for
minutes; a training sends in the background and waits, bounded, only at its end (``sync_timeout``); a job
that only reads and writes a little (``analyze``) lets MLflow retry a few seconds (``bounded_requests``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import mlflow

from resnorm.errors import ConfigError, TrackingUnavailable, one_line
from resnorm.tracking import server_answers

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


SYNC_TIMEOUT = "RESNORM_SYNC_TIMEOUT"  # seconds the end of a run waits for the tracking server (300)


def sync_timeout() -> float:
    """``RESNORM_SYNC_TIMEOUT`` in seconds (default 300); a value that is not a number of seconds is refused."""
    text = os.environ.get(SYNC_TIMEOUT, "300")
    with contextlib.suppress(ValueError):
        if 0 <= (seconds := float(text)) < float("inf"):
            return seconds
    raise ConfigError(f"{SYNC_TIMEOUT}={text!r} is not a number of seconds >= 0; unset it or give e.g. 300")
