"""The local executor: a ``Pool`` of ``parallel`` worker processes on this machine, each training one
child after another (``resnorm.sweep.worker``), as Ray Tune reuses its actors.

A child costs its epochs and its model logging; the imports (torch, MLflow, scikit-learn,
matplotlib: seconds) are paid once, by the fork server the workers are forked from
(``resnorm.sweep.forkserver``). Each child is still its own MLflow run, made here
first (``child.create_child_run``) and trained by the same function as the ``train`` entry point.

What the pool knows of a worker comes from the worker itself: its process's pidfd says whether it
lives (not the fork server, whose word is lost with it), its pipe what became of its child. So:

- a worker that dies (``kill -9``, out of memory) fails only its child - FAILED, with the reason, and
  resumable from its snapshot by a re-run of the sweep - and is replaced;
- a worker that leaves (SIGTERM to it alone: its child ends KILLED, resumable) gets no more children
  and is replaced; the sweep goes on;
- a fork server that dies leaves its workers training: nothing is lost, and the next worker needed
  comes from a new server;
- interrupted (SIGTERM, Ctrl-C), the pool stops its busy workers with SIGTERM (their children end
  KILLED, resumable) and waits; a worker that does not answer in time (stopped, hung) is killed and
  its child ended KILLED with the reason.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing import reduction
from multiprocessing.process import BaseProcess
from typing import IO

from mlflow.tracking import MlflowClient

from resnorm import home
from resnorm.config import TrainConfig
from resnorm.sweep import forkserver
from resnorm.sweep.child import Child, SweepContext, absolute_tracking_uri, create_child_run, request, settle
from resnorm.tracking import KILLED

STOP_SECONDS = 120.0  # how long a stopped child may take to close its run
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


class Pool:
    """``size`` worker processes, forked at once (this waits for the fork server's imports if they
    are still under way); with GPUs, worker i sees GPU i % gpus. ``stop_seconds``: how long a stopped
    worker may take to answer before it is killed."""

    def __init__(self, project_dir: str, size: int, gpus: int = 0, stop_seconds: float = STOP_SECONDS) -> None:
        self.project_dir, self.gpus, self.stop_seconds = project_dir, gpus, stop_seconds
        self.workers = [self._spawn(i) for i in range(size)]

    def _spawn(self, slot: int) -> Worker:
        return Worker(self.project_dir, slot % self.gpus if self.gpus else None, forked=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:
            self.close()
        else:  # the sweep failed or was stopped: busy workers were stopped already; idle ones need not import on
            for w in self.workers:
                w.kill()
                w.replies.close()
                os.close(w.pidfd)

    def close(self) -> None:
        """End every worker: all are told at once, then waited for (each takes a moment to exit)."""
        for w in self.workers:
            w.end_input()
        for w in self.workers:
            w.close()

    def run(self, ctx: SweepContext, children: Sequence[Child]) -> dict[TrainConfig, str]:
        """Train ``children`` on the workers, one child per idle worker; returns each child's final
        status by configuration. A worker that dies fails its child and another takes its place; one
        that leaves is replaced too."""
        client = MlflowClient()
        statuses: dict[TrainConfig, str] = {}
        queue: list[tuple[Child, str]] = [(c, "") for c in children]  # (child, the run made for it, if any)

        def report(child: Child, run_id: str, status: str) -> None:
            statuses[child.config] = status
            print(f"[{len(statuses)}/{len(children)}] {child.name}: {status} (run {run_id})", flush=True)

        try:
            while queue or any(w.child for w in self.workers):
                self._hand_out(client, ctx, queue)
                busy = {w.replies: w for w in self.workers if w.child is not None}
                ready, _, _ = select.select(list(busy), [], [], 1.0)
                for replies in ready:
                    w = busy[replies]
                    child, run_id = w.child, w.run_id
                    assert child is not None  # busy: it has a child
                    w.child = None
                    if w.read_reply() is None:  # the worker died: fail its child; another takes its place
                        report(child, run_id, settle(client, run_id, w.death()))
                    else:
                        report(child, run_id, settle(client, run_id, "the training ended without closing its run"))
        except BaseException:
            self._stop(client, report)
            raise
        return statuses

    def _hand_out(self, client: MlflowClient, ctx: SweepContext, queue: list[tuple[Child, str]]) -> None:
        for slot, w in enumerate(self.workers):
            if not queue:
                return
            if w.child is not None:
                continue
            if w.leaving or not w.alive():  # it left, or died idle: a new one in its place
                w.close()
                self.workers[slot] = w = self._spawn(slot)
            child, made = queue.pop(0)
            run_id = made or child.launch.resume or child.run_id or create_child_run(client, ctx, child)
            if not w.give(child, run_id):  # gone before it read the request: the child waits for another
                w.leaving = True
                queue.insert(0, (child, run_id))

    def _stop(self, client: MlflowClient, report) -> None:
        """Stop the busy workers (their children end KILLED) and wait, bounded, until each has answered;
        one that does not is killed, and its child's run ended KILLED with the reason."""
        busy = [w for w in self.workers if w.child is not None]
        for w in busy:
            w.stop()
        deadline = time.monotonic() + self.stop_seconds
        for w in busy:
            ready, _, _ = select.select([w.replies], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                w.read_reply()
                why, status = "its sweep was stopped", None
            else:
                w.kill()  # stopped (SIGSTOP) or hung: it would never answer
                why = (
                    f"its sweep was stopped and its worker (pid {w.proc.pid}) did not stop within "
                    f"{self.stop_seconds:g} s, so it was killed; re-run the sweep into its parent to resume it"
                )
                status = KILLED
            report(w.child, w.run_id, settle(client, w.run_id, why, status))
            w.child = None
