"""Where the local pool's workers come from: one fork server per sweep process (Python's
``multiprocessing`` "forkserver" start method) that imports what a training needs once - torch,
torch._dynamo, MLflow, scikit-learn, matplotlib, resnorm: ``resnorm.sweep.worker`` and what it
loads, about 5 s on one core - and then forks each worker ready to train. Without it every worker
imported all of that itself, beside the sweep's own imports, on the same cores.

``start`` launches the server without waiting for its imports, so that they overlap the sweep's
own start (the sweep entry point calls it before it imports torch). The server never touches CUDA:
each worker still picks its GPU (``CUDA_VISIBLE_DEVICES``) after the fork. It serves every sweep of
the process that started it and ends with that process.

Nothing heavy is imported here.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Sequence
from multiprocessing import forkserver
from types import FrameType

# Imported by the server before it forks anything: this module first (the server then ends at once,
# see the end of this file), then the worker and everything a training needs.
PRELOAD = ["resnorm.sweep.forkserver", "resnorm.sweep.worker"]


def context() -> multiprocessing.context.ForkServerContext:
    """The ``multiprocessing`` context whose processes are forked by the server."""
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, multiprocessing.context.ForkServerContext)
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now, if it is not running; returns at once (its imports go on).

    It starts with its standard output and error on ``os.devnull``: it says nothing (each worker is
    handed the sweep's streams), and a server holding them would keep whoever reads this process's
    output waiting until it, too, has exited."""
    context()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
        forkserver.ensure_running()
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def needed(argv: Sequence[str]) -> bool:
    """Whether the sweep command line ``argv`` will fork local workers (not ``--help``, ``--executor``
    absent or ``local``): the entry point's guess before click parses it; a wrong one costs time only."""
    if "--help" in argv or "-h" in argv:
        return False
    for i, arg in enumerate(argv):
        if arg == "--executor" and i + 1 < len(argv):
            return argv[i + 1] == "local"
        if arg.startswith("--executor="):
            return arg.split("=", 1)[1] == "local"
    return True


def work(*args) -> None:
    """A forked worker's first call (``multiprocessing.Process`` target): ``resnorm.sweep.worker.forked``,
    named here so that the sweep never imports the worker module itself."""
    from resnorm.sweep.worker import forked

    forked(*args)


def in_fork_server() -> bool:
    """Whether this import is the fork server's preload: ``multiprocessing.forkserver.main`` is on
    the stack (only there; the sweep and its workers import this module otherwise)."""
    main = getattr(sys.modules.get("multiprocessing.forkserver"), "main", None)
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code is getattr(main, "__code__", None):
            return True
        frame = frame.f_back
    return False


def _end_at_once() -> None:
    """When the sweep process exits, its server reads the end of its alive pipe and raises
    SystemExit: the interpreter's full teardown of torch, MLflow and the rest followed, keeping a
    core busy after the sweep had ended (2 to 3 s on an idle 2-core machine, 4 to 6.5 s beside a
    busy process; 0.02 to 0.06 s since). The server holds nothing to clean up (no runs, no files: it
    only forks), so once the other exit handlers have run it leaves without that teardown, as
    ``resnorm.cli.leave`` does. A worker forked from the server inherits this handler, and is left
    alone by it: its pid differs."""
    server = os.getpid()

    def end() -> None:
        if os.getpid() != server:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    # Registered before the server's other imports, so it runs after their exit handlers (last in, first out).
    atexit.register(end)


if in_fork_server():
    _end_at_once()
