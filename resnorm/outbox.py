"""Per-epoch metrics on their way to the tracking server, sent by a background thread.

Training must not wait on the server: MLflow's HTTP client retries a refused connection seven
times with backoff, which can block for minutes. So each epoch's batch is queued here and sent
by one thread; while the server does not answer, batches wait and are retried, and training goes
on. Nothing is lost on a crash either: the run's snapshot (written before an epoch is
reported) holds every epoch with its timestamp, and a resumed run reports them again. Re-sending
is safe because MLflow's SQL store drops a metric identical in key, value, step and timestamp,
so every point lands exactly once.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
RETRY_SECONDS = 2.0


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


def wait_until(cond: threading.Condition, done: Callable[[], bool], timeout: float) -> bool:
    """Wait on ``cond`` up to ``timeout`` seconds until ``done()``; whether it came true."""
    deadline = time.monotonic() + timeout
    with cond:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
    return True


class Outbox:
    """A queue of metric batches for one run, drained by a background sender."""

    def __init__(self, run_id: str, client: MlflowClient, tracking_uri: str) -> None:
        self.run_id = run_id
        self.client = client
        self.tracking_uri = tracking_uri
        self.last_error: str | None = None
        self._pending: list[Metric] = []
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_forever, name=f"outbox-{run_id}", daemon=True)
        self._thread.start()

    def put(self, metrics: Sequence[Metric]) -> None:
        with self._cond:
            self._pending.extend(metrics)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything queued has been sent."""
        return wait_until(self._cond, lambda: not self._pending, timeout)

    def close(self) -> None:
        """Stop the sender (what is still queued stays in the snapshot for a resume)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _send_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._pending[:MAX_METRICS_PER_BATCH]
            # A short probe first: a dead server answers it in milliseconds, whereas log_batch
            # would sit in MLflow's retries.
            why = server_answers(self.tracking_uri, timeout=2.0)
            if why is None:
                try:
                    self.client.log_batch(self.run_id, metrics=batch)
                except Exception as e:  # noqa: BLE001 -- any failure: keep the batch, retry later
                    why = f"{type(e).__name__}: {e}"
            with self._cond:
                if why is None:
                    del self._pending[: len(batch)]
                    self.last_error = None
                    self._cond.notify_all()
                else:
                    self.last_error = why
                    self._cond.wait(RETRY_SECONDS)
