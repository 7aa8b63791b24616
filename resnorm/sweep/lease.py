"""Who runs a sweep's parent: a lease that the tracking store arbitrates, so that two sweeps into one
parent are refused whichever machine, user or ``RESNORM_HOME`` each runs from (a lock file on one
machine's disk cannot see a sweep started elsewhere against the same server).

The store gives one write that cannot race: a param is written once, and a second write of the same key
with another value is refused by the store's unique key (SQLite, PostgreSQL, MySQL and a server in front
of them alike). Each attempt at a sweep claims the next ``resnorm.attempt.{k}`` param with who it is
(host, pid, when it started); of two sweeps that claim the same k, one wins. The holder of the highest
attempt holds the parent while it lives:

- on this machine (same host, same pid namespace) while its process lives (pid and start time);
- seen from another machine, while its heartbeat, the ``resnorm.lease`` tag it rewrites every
  ``BEAT_SECONDS``, is younger than ``STALE_SECONDS`` (the clocks of two machines are assumed to agree
  within a minute);
- never once it has written ``released`` there (it ended, whatever its status).

A sweep killed outright (``kill -9``, a lost machine) leaves its lease to expire: at once for a re-run on
the same machine, after ``STALE_SECONDS`` elsewhere. The attempts stay on the parent as its history.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm.errors import RunBusy

ATTEMPT_PREFIX = "resnorm.attempt."  # params: resnorm.attempt.1, .2, ...: who ran each attempt of the sweep
LEASE_TAG = "resnorm.lease"  # the holder's heartbeat: {"attempt": k, "beat": unix seconds} or released
BEAT_SECONDS = 15.0
STALE_SECONDS = 90.0


def _namespace() -> str:
    """This machine and pid namespace: a pid means the same process only where this is the same."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        pids = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot = pids = ""
    return f"{socket.gethostname()} {boot} {pids}"


@dataclass(frozen=True)
class Holder:
    """Who claimed an attempt: its host (by name), process and when that process started."""

    host: str
    pid: int
    started: float  # the process's start time (psutil), which tells a reused pid apart
    where: str  # host, boot and pid namespace (_namespace)
    claimed: float = 0.0  # when it claimed its attempt (its lease counts from then until its first beat)

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), _namespace(), time.time())

    def text(self) -> str:
        fields = {"host": self.host, "pid": self.pid, "started": self.started, "where": self.where}
        return json.dumps({**fields, "claimed": self.claimed})

    @classmethod
    def read(cls, text: str) -> Holder:
        try:
            d = json.loads(text)
            return cls(str(d["host"]), int(d["pid"]), float(d["started"]), str(d["where"]), float(d["claimed"]))
        except (ValueError, KeyError, TypeError):
            return cls("an unknown host", 0, 0.0, "")  # not ours to read: treated as expired

    def describe(self) -> str:
        return f"pid {self.pid}" if self.where == _namespace() else f"pid {self.pid} on {self.host}"

    def alive_here(self) -> bool | None:
        """Whether the process lives, when it would be on this machine; None when it is elsewhere."""
        if self.where != _namespace() or not self.pid:
            return None if self.pid else False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False


def attempts(params: dict[str, str]) -> dict[int, Holder]:
    """Every attempt recorded on a parent's params: number -> holder."""
    out = {}
    for key, value in params.items():
        if key.startswith(ATTEMPT_PREFIX) and key[len(ATTEMPT_PREFIX) :].isdigit():
            out[int(key[len(ATTEMPT_PREFIX) :])] = Holder.read(value)
    return out


def live_holder(client: MlflowClient, run_id: str) -> Holder | None:
    """The holder of the parent's latest attempt while it holds it, else None."""
    run = client.get_run(run_id)
    claimed = attempts(run.data.params)
    if not claimed:
        return None
    k = max(claimed)
    holder = claimed[k]
    try:
        beat = json.loads(run.data.tags.get(LEASE_TAG, "{}"))
    except ValueError:
        beat = {}
    if beat.get("attempt") == k and beat.get("released"):
        return None
    here = holder.alive_here()
    if here is not None:
        return holder if here else None
    last = max(holder.claimed, float(beat.get("beat", 0)) if beat.get("attempt") == k else 0.0)
    return holder if time.time() - last < STALE_SECONDS else None


def _busy(run_id: str, holder: Holder) -> RunBusy:
    return RunBusy(
        f"run {run_id} is a sweep that another live process ({holder.describe()}) is running; wait for it or stop "
        "it before running into it again",
        run_id,
    )


class Lease:
    """This process's hold on a sweep's parent, kept alive by a heartbeat until ``release``."""

    def __init__(self, client: MlflowClient, run_id: str, attempt: int) -> None:
        self.client, self.run_id, self.attempt = client, run_id, attempt
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._beat_forever, name=f"lease-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self, **extra) -> None:
        self.client.set_tag(self.run_id, LEASE_TAG, json.dumps({"attempt": self.attempt, "beat": time.time(), **extra}))

    def _beat_forever(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat only shortens the lease seen from elsewhere
                self._beat()

    def release(self) -> None:
        """Let go: the next sweep into the parent need not wait for the lease to expire."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # unreleased, it expires (at once on this machine)
            self._beat(released=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(client: MlflowClient, run_id: str) -> Lease:
    """Hold the sweep's parent ``run_id``, or raise ``RunBusy`` naming the live sweep that holds it
    (nothing is written then)."""
    holder = live_holder(client, run_id)
    if holder is not None:
        raise _busy(run_id, holder)
    taken = attempts(client.get_run(run_id).data.params)
    k = max(taken, default=0) + 1
    claim(client, run_id, k, Holder.me())
    return Lease(client, run_id, k)


def claim(client: MlflowClient, run_id: str, attempt: int, me: Holder) -> None:
    """Write ``me`` as the holder of ``attempt``; of two sweeps that claim one attempt the store keeps the
    first, and the other is refused here, naming it (``RunBusy``)."""
    try:
        client.log_param(run_id, f"{ATTEMPT_PREFIX}{attempt}", me.text())
    except MlflowException:
        theirs = attempts(client.get_run(run_id).data.params).get(attempt)
        if theirs is None or theirs == me:
            raise
        raise _busy(run_id, theirs) from None
