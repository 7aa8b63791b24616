"""The sweep's side of one worker process: started (forked by the fork server for the local pool, or as a
new process for a Ray trial), given a child, its answer read, stopped, killed. What the sweep knows of a
worker comes from the worker itself: its process's pidfd says whether it lives (not the fork server,
whose word is lost with it), its pipe what became of its child. The worker's own side is
``resnorm.sweep.worker``; the pool of them, ``resnorm.sweep.pool``."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from multiprocessing import reduction
from multiprocessing.process import BaseProcess
from typing import IO

from resnorm import home
from resnorm.sweep import forkserver
from resnorm.sweep.child import Child, absolute_tracking_uri, request

REPORT_SECONDS = 10.0  # how long the fork server may take to report a dead worker's exit status


def worker_env(project_dir: str, gpu: int | None) -> dict[str, str]:
    """A worker's environment: this one, with the tracking URI and RESNORM_HOME made absolute
    (relative ones mean the folder the sweep was started in), without the sweep's own run, and
    with ``gpu`` the only one it sees."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    }
    env["MLFLOW_TRACKING_URI"] = absolute_tracking_uri()
    env["RESNORM_HOME"] = str(home.home().absolute())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_dir, env.get("PYTHONPATH")]))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


class Worker:
    """One worker process and the child it is training, if any: forked by the fork server (the
    local pool), or started as ``python -m resnorm.sweep.worker`` (a Ray trial, which trains one
    child: a fork server would save it nothing)."""

    def __init__(self, project_dir: str, gpu: int | None, *, forked: bool) -> None:
        env = worker_env(project_dir, gpu)
        replies, reply_end = os.pipe()
        if forked:
            forkserver.start()  # a no-op while the server lives; a new one if it died
            requests_end, requests = os.pipe()
            process = forkserver.context().Process(
                target=forkserver.work,
                args=(env, os.sched_getaffinity(0), os.getpid(), *map(_Inherited, (requests_end, reply_end, 1, 2))),
                name="resnorm-sweep-worker",
            )
            process.start()
            os.close(requests_end)
            self.proc: subprocess.Popen | _Forked = _Forked(process)
            self.requests: IO[str] = os.fdopen(requests, "w")
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resnorm.sweep.worker", str(reply_end), str(os.getpid())],
                stdin=subprocess.PIPE,
                text=True,
                pass_fds=(reply_end,),
                env=env,
                start_new_session=True,
            )
            assert self.proc.stdin is not None  # stdin=PIPE
            self.requests = self.proc.stdin
        os.close(reply_end)  # the worker holds the only write end: its death is an end of file here
        self.replies = os.fdopen(replies)
        self.pidfd = os.pidfd_open(self.proc.pid)  # readable once the process has ended, whoever its parent is
        self.child: Child | None = None
        self.run_id = ""
        self.leaving = False  # it said it ends after its child: no more work for it

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def give(self, child: Child, run_id: str) -> bool:
        """Ask the worker to train ``child`` into ``run_id``; False when it is gone (nothing was given)."""
        try:
            self.requests.write(request(child, run_id))
            self.requests.flush()
        except (BrokenPipeError, ValueError):  # it died, or its requests were ended
            return False
        self.child, self.run_id = child, run_id
        return True

    def read_reply(self) -> dict | None:
        """The reply to the current child, or None when the worker died first."""
        line = self.replies.readline()
        reply = json.loads(line) if line else None
        self.leaving = self.leaving or reply is None or bool(reply.get("leaving"))
        return reply

    def death(self) -> str:
        """Why the worker is gone, once it is."""
        return (
            f"its sweep worker (pid {self.proc.pid}) died while training it ({self.how()}); re-run the sweep into "
            "its parent to resume it from its snapshot"
        )

    def how(self) -> str:
        """How the process ended, as far as is known: a forked worker's exit status comes through the fork
        server (a moment after the process itself is gone), which may be gone too."""
        self.wait()
        code = self.proc.wait(REPORT_SECONDS)
        if code is None:
            return "exit status unknown: its fork server is gone"
        return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the process has ended (True) or ``timeout`` seconds have passed (False)."""
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    def stop(self) -> None:
        """SIGTERM to the worker's session (the child it trains ends KILLED)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.wait()

    def _signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:  # forked a moment ago: not yet in a session of its own
                os.kill(self.proc.pid, signum)

    def end_input(self) -> None:
        """No more children: the worker ends once it has answered for the one it trains."""
        if not self.requests.closed:
            try:
                self.requests.close()
            except BrokenPipeError:
                pass

    def close(self, timeout: float = 30.0) -> None:
        self.end_input()
        if not self.wait(timeout):
            self.kill()
        self.proc.poll()  # a process of ours (a Ray trial's worker) is reaped; a forked one, by its server
        self.replies.close()
        os.close(self.pidfd)


class _Forked:
    """A forked worker's ``multiprocessing.Process`` with the part of ``Popen`` the pool uses: its exit
    code as the fork server reports it (None while it runs, or when the server is gone)."""

    def __init__(self, process: BaseProcess) -> None:
        assert process.pid is not None  # started
        self.process, self.pid = process, process.pid

    def poll(self) -> int | None:
        code = self.process.exitcode
        # A fork server that died takes every exit status with it: multiprocessing reports 255 for all.
        return None if code == 255 else code

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the fork server reports it (``timeout`` seconds at most), or None."""
        self.process.join(timeout)
        return self.poll()


class _Inherited:
    """One of this process's file descriptors, handed to a forked worker (multiprocessing passes it
    through the fork server's socket); the worker receives it as a descriptor number."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _received, (reduction.DupFd(self.fd),)


def _received(dup) -> int:
    return dup.detach()
