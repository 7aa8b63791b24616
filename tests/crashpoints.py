"""Crash points: every call a sweep makes to the tracking store, found by recording a sweep, and a way to
stop the sweep just before any one of them - every process of it at once with SIGKILL (the machine is
lost), or SIGTERM to every process of it (a supervisor's stop) - so that a test can re-run the sweep into
its parent and check what must hold after any crash (``tests/test_crashes.py``).

A call site is the call of an ``MlflowClient`` method (or of the local artifact store's, where the project
calls it directly) made from the project's code, named by the method and the project's frames on the
stack, innermost first (``MlflowClient.set_tag @ resnorm/sweep/runner.py:170 _open_parent <
resnorm/sweep/runner.py:104 _run_under < ...``): a new call in the code is a new site without anyone
listing it. MLflow's own fluent calls (``mlflow.start_run``, ``mlflow.register_model``, ``log_model``) are
the client calls they make, each a site. A call made inside another intercepted call is part of it. Calls
with no project frame on the stack (MLflow's system-metrics thread) are not the sweep's. The entry point's
frames are left out of a site's name: ``sweep`` calls the same code for a fixed-seed and an adaptive sweep
from two lines.

The hook is set by ``RESNORM_CRASH`` in the environment, which a sweep hands to its workers:
``record:FOLDER`` appends each process's first call of every site to ``FOLDER/sites``;
``SIGNAL:SITE:FOLDER`` (SIGNAL ``KILL`` or ``TERM``) stops the sweep at the first call of SITE in any of
its processes (``SITE*``: of any site whose name starts so). Every process of the sweep writes its pid to
``FOLDER/pids`` when the hook is installed (the sweep process, and each worker as it starts), which is how
the crash finds them all.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

ENV = "RESNORM_CRASH"
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / d) + os.sep for d in ("resnorm", "analysis"))  # entry points differ only in how they call it
HERE = __file__
LOCAL_REPO_CALLS = ("log_artifact", "log_artifacts", "delete_artifacts")  # snapshots.forget deletes directly

# Threads that call on a clock, not at a point of the sweep's work: a sweep reaches their calls only when it
# outlasts their period (the lease's heartbeat, every 15 s), so they are no crash point of their own; a kill
# while they wait is a kill at whatever point the sweep has reached, which the other sites cover.
TIMERS = ("_beat_forever",)

_inside = threading.local()  # within an intercepted call: what it calls in turn is part of it
_seen: set[str] = set()  # this process's sites, recorded once each
_installed: list[bool] = []


def site_of(name: str) -> str | None:
    """The site of a call to ``name`` from here: the method and the project's frames, innermost first; None
    when no project frame is on the stack."""
    frames, frame = [], sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PROJECT):
            if frame.f_code.co_name in TIMERS:
                return None
            frames.append(f"{os.path.relpath(path, ROOT)}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return f"{name} @ {' < '.join(frames)}" if frames else None


def _config() -> tuple[str, str, Path] | None:
    """(mode, site, folder) from RESNORM_CRASH: mode "record", "KILL" or "TERM"."""
    text = os.environ.get(ENV, "")
    if not text:
        return None
    mode, rest = text.split(":", 1)
    if mode == "record":
        return mode, "", Path(rest)
    site, folder = rest.rsplit(":", 1)
    return mode, site, Path(folder)


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _crash(mode: str, folder: Path) -> None:
    """Stop every process of the sweep: SIGKILL all at once (this one last; with the sweep's process group,
    which holds a local Ray cluster's processes), or SIGTERM to each."""
    signum = signal.SIGKILL if mode == "KILL" else signal.SIGTERM
    me = os.getpid()
    pids = [int(p) for p in (folder / "pids").read_text().split()]
    for pid in [p for p in pids if p != me]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    if signum == signal.SIGKILL and pids and os.getpgid(me) != pids[0]:
        try:
            os.killpg(pids[0], signum)  # the sweep made its own session: its group is its pid
        except ProcessLookupError:
            pass
    os.kill(me, signum)


def _at(site: str) -> None:
    config = _config()
    if config is None:
        return
    mode, target, folder = config
    if mode == "record":
        if site not in _seen:
            _seen.add(site)
            _append(folder / "sites", f"{os.getpid()}\t{site}\t{time.time():.3f}")
        return
    if site != target and not (target.endswith("*") and site.startswith(target[:-1])):  # SITE* : any site so named
        return
    try:  # the first process to reach the site crashes the sweep; a later one (or the re-run) goes on
        os.close(os.open(folder / "crashed", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    _append(folder / "crashed", f"{os.getpid()} {threading.current_thread().name}")
    _crash(mode, folder)


def _wrap(owner: type, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def call(*args, **kwargs):
        if getattr(_inside, "depth", 0):
            return original(*args, **kwargs)
        site = site_of(label)
        if site is not None:
            _at(site)
        _inside.depth = 1
        try:
            return original(*args, **kwargs)
        finally:
            _inside.depth = 0

    setattr(owner, name, call)


def install() -> None:
    """Intercept this process's calls to the tracking store (once), and register the process as the
    sweep's, when ``RESNORM_CRASH`` asks for it."""
    config = _config()
    if config is not None:
        _append(config[2] / "pids", str(os.getpid()))
    if _installed:
        return
    _installed.append(True)
    for name, member in vars(MlflowClient).items():
        if callable(member) and not name.startswith("_"):
            _wrap(MlflowClient, name, f"MlflowClient.{name}")
    for name in LOCAL_REPO_CALLS:
        _wrap(LocalArtifactRepository, name, f"LocalArtifactRepository.{name}")


def work(*args) -> None:
    """A forked sweep worker's first call under the harness: the hook, then the real worker
    (``resnorm.sweep.forkserver.work``). The sweep's pool names this function as its workers' target
    (pickled by name, so the fork server imports this module in the worker)."""
    from resnorm.sweep import forkserver

    env = args[0]
    if env.get(ENV):
        os.environ[ENV] = env[ENV]  # forked() sets the whole environment; the hook reads it from here on
        install()
    forkserver.work(*args)
