"""Signals a job answers: SIGTERM (what Slurm, systemd, Kubernetes and a dying sweep send) and Ctrl-C
stop it as an exception at the point where it is, so that its run ends KILLED and resumable, except
inside a database store's call, and except while a run logs its model (``HeldSignals``).

Why the store's call matters: MLflow's SQLAlchemy store catches ``Exception`` to roll a session back,
and a ``KeyboardInterrupt`` raised between a session's first write and its commit is not one. After
about half of the interrupts at random points of ``log_batch`` on SQLite, the process was left
holding the database's write lock, and every writer of that database, this process's own ending of
its run first, then waited out SQLite's 20 s busy timeout and failed "database is locked": a killed
sweep's workers could not end their children, and its re-run could not claim the parent. So a signal
that lands inside a store's call is raised as the outermost such call returns, by a trace function on
that one frame (``raise_on_return``); anywhere else it is raised where it lands.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from resnorm.errors import Interrupted

# Modules whose frames on the stack mean a database transaction may be open: SQLAlchemy itself and
# MLflow's stores over it. A REST store's request is not among them: a stop may cut one short.
STORE_MODULES = ("sqlalchemy", "mlflow.store.db")
STORE_MODULE_SUFFIX = "sqlalchemy_store"  # mlflow.store.tracking.sqlalchemy_store, the registry's


def outermost_store_frame(frame: FrameType | None) -> FrameType | None:
    """The outermost frame of ``frame``'s stack that runs a database store's code (``STORE_MODULES``): the
    store's call that may hold a transaction open; None when the stack holds none."""
    outer = None
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if module.startswith(STORE_MODULES) or module.endswith(STORE_MODULE_SUFFIX):
            outer = frame
        frame = frame.f_back
    return outer


def raise_on_return(frame: FrameType, error: BaseException) -> None:
    """Raise ``error`` in the main thread as ``frame`` (of the main thread's stack) returns, by a trace
    function on that frame alone (``sys.settrace`` with a global function that traces no new frame, so the
    cost is one call per call until then; the tracer that was there before is put back)."""
    before = sys.gettrace()
    if before is _trace_nothing:  # ours: a stop already waits for a return, and there was no tracer before it
        before = None

    def on_return(f: FrameType, event: str, arg: object):
        if event != "return":
            return on_return
        sys.settrace(before)
        raise error

    frame.f_trace_lines = False
    frame.f_trace = on_return
    sys.settrace(before or _trace_nothing)


def _trace_nothing(frame: FrameType, event: str, arg: object) -> None:
    return None


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Interrupted`` once and Ctrl-C (unless ignored) raises
    ``KeyboardInterrupt``, each where the main thread is or, inside a database store's call, as that call
    returns. Outside the main thread, signals are left alone."""
    stopping: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # SIGTERM once: a second (a supervisor repeating itself, the parent-death signal after a SIGTERM
        # to the process group) must not cut short the first one's ending of the run KILLED.
        if signum == signal.SIGTERM and stopping:
            return
        error = KeyboardInterrupt()
        if signum == signal.SIGTERM:
            stopping.append(signum)
            error = Interrupted("stopped by SIGTERM")
        store = outermost_store_frame(frame)
        if store is None:
            raise error
        raise_on_return(store, error)

    try:
        previous = {signum: signal.signal(signum, interrupt) for signum in _taken()}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _taken() -> list[signal.Signals]:
    """The signals a job answers: SIGTERM, and Ctrl-C unless this process was started ignoring it (a
    shell's background job), which stays ignored as Python leaves it."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    return [signal.SIGTERM] if ignored else [signal.SIGTERM, signal.SIGINT]


class HeldSignals:
    """From ``start()`` to the end of the block, SIGTERM and Ctrl-C wait: a run logging its model
    completes (its model logged, registered, the run FINISHED) and the signal is raised afterwards,
    as ``Interrupted``. Stopped half-way, MLflow could leave a FINISHED run without its model."""

    def __init__(self) -> None:
        self.caught: list[str] = []
        self.previous: dict[int, Callable | int | None] = {}

    def start(self) -> None:
        def hold(signum, frame):
            self.caught.append(signal.Signals(signum).name)

        try:
            for signum in _taken():
                self.previous[signum] = signal.signal(signum, hold)
        except ValueError:  # not the main thread: signals are not ours to hold
            pass

    def __enter__(self) -> HeldSignals:
        return self

    def __exit__(self, kind, error, tb) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.caught and kind is None:
            raise Interrupted(
                f"stopped by {self.caught[0]}, which came while the run was logging its model: the run finished first"
            )


def stop_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent_pid``, its parent, dies (Linux's
    parent-death signal; elsewhere nothing): the job then ends as SIGTERM ends it, its run KILLED."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def stop_when_gone(pid: int) -> None:
    """Send this process SIGTERM when process ``pid`` (not its parent: a forked sweep worker's parent
    is the fork server) ends, as ``stop_with_parent`` does for a parent: a thread waits on the
    process's pidfd (Linux 5.3 and later; elsewhere nothing)."""
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except (AttributeError, OSError):  # no pidfds here
        return

    def watch() -> None:
        select.select([watched], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name=f"stop-when-{pid}-ends", daemon=True).start()
