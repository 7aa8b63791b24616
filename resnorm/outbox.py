"""What a training sends to the tracking server in the background: one retrying sender, and the
per-epoch metrics it carries (``Outbox``; the snapshot upload, ``resnorm.snapshots.Uploader``, is
the other).

Training must not wait on the server: MLflow's HTTP client retries a refused connection seven
times with backoff, which can block for minutes. So what is to be sent waits here and one thread
sends it; while the server does not answer (a 2 s probe first), the work waits and is retried
every few seconds, and training goes on. Nothing is lost on a crash either: the run's snapshot
(written before an epoch is reported) holds every epoch with its timestamp, and a resumed run
reports them again. Re-sending is safe because MLflow's SQL store drops a metric identical in key,
value, step and timestamp, so every point lands exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from resnorm.tracking import server_answers

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
RETRY_SECONDS = 2.0
PROBE_SECONDS = 2.0


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


class RetryingSender:
    """One background thread that sends what is pending to the tracking server, retrying every
    ``RETRY_SECONDS`` while that fails. Subclasses say what is pending (``pending_work``, called
    holding ``self.cond``) and send one piece of it (``send_once``, without the lock: None when it
    went, else why not); they change their state under ``self.cond`` and ``notify()``."""

    def __init__(self, name: str, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.last_error: str | None = None
        self.cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send_forever, name=name, daemon=True)
        self._thread.start()

    def pending_work(self) -> bool:
        raise NotImplementedError

    def send_once(self) -> str | None:
        raise NotImplementedError

    def probe(self) -> str | None:
        """None when the server answers a short probe (a dead one answers it in milliseconds, where
        MLflow's own call would sit in its retries), else why not."""
        return server_answers(self.tracking_uri, timeout=PROBE_SECONDS) if self.tracking_uri else None

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is pending."""
        return wait_until(self.cond, lambda: not self.pending_work(), timeout)

    def close(self) -> None:
        """Stop the sender (what is still pending stays in the run's snapshot, for a resume)."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        self._thread.join(timeout=5)  # a send stuck on a dead server is left to die with the process

    def _send_forever(self) -> None:
        while True:
            with self.cond:
                while not self.pending_work() and not self._closed:
                    self.cond.wait()
                if self._closed:
                    return
            why = self.send_once()
            with self.cond:
                self.last_error = why
                self.cond.notify_all()
                if why is not None:
                    self.cond.wait(RETRY_SECONDS)


class Outbox(RetryingSender):
    """A run's per-epoch metrics, queued and sent in batches."""

    def __init__(self, run_id: str, client: MlflowClient, tracking_uri: str) -> None:
        self.run_id, self.client = run_id, client
        self._pending: list[Metric] = []
        super().__init__(f"outbox-{run_id}", tracking_uri)

    def put(self, metrics: Sequence[Metric]) -> None:
        with self.cond:
            self._pending.extend(metrics)
            self.cond.notify_all()

    @property
    def pending(self) -> int:
        with self.cond:
            return len(self._pending)

    def pending_work(self) -> bool:
        return bool(self._pending)

    def send_once(self) -> str | None:
        with self.cond:
            batch = self._pending[:MAX_METRICS_PER_BATCH]
        why = self.probe()
        if why is None:
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # noqa: BLE001 -- any failure: keep the batch, retry later
                return f"{type(e).__name__}: {e}"
            with self.cond:
                del self._pending[: len(batch)]
        return why
