"""The local executor: a ``Pool`` of ``parallel`` worker processes on this machine, each training one
child after another (``resnorm.sweep.worker``), as Ray Tune reuses its actors.

A child costs its epochs and its model logging; the imports (torch, MLflow, scikit-learn,
matplotlib: seconds) are paid once, by the fork server the workers are forked from
(``resnorm.sweep.forkserver``). Each child is still its own MLflow run, made here
first (``child.create_child_run``) and trained by the same function as the ``train`` entry point.
A worker that dies (``kill -9``, out of memory) fails only its child - FAILED, with the reason, and
resumable from its snapshot by a re-run of the sweep - and is replaced. Interrupted (SIGTERM,
Ctrl-C), the pool stops its busy workers with SIGTERM (their children end KILLED, resumable),
waits for them, and passes the interrupt on.
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

from mlflow.tracking import MlflowClient

from resnorm import home
from resnorm.sweep import forkserver
from resnorm.sweep.child import Child, SweepContext, absolute_tracking_uri, create_child_run, request, settle

STOP_SECONDS = 120.0  # how long a stopped child may take to close its run


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
            requests_end, requests = os.pipe()
            process = forkserver.context().Process(
                target=forkserver.work,
                args=(env, os.sched_getaffinity(0), os.getpid(), *map(_Inherited, (requests_end, reply_end, 1, 2))),
                name="resnorm-sweep-worker",
            )
            process.start()
            os.close(requests_end)
            self.proc: subprocess.Popen | _Forked = _Forked(process)
            self.requests = os.fdopen(requests, "w")
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resnorm.sweep.worker", str(reply_end), str(os.getpid())],
                stdin=subprocess.PIPE,
                text=True,
                pass_fds=(reply_end,),
                env=env,
                start_new_session=True,
            )
            self.requests = self.proc.stdin
        os.close(reply_end)  # the worker holds the only write end: its death is an end of file here
        self.replies = os.fdopen(replies)
        self.child: Child | None = None
        self.run_id = ""

    def give(self, child: Child, run_id: str) -> None:
        self.child, self.run_id = child, run_id
        self.requests.write(request(child, run_id))
        self.requests.flush()

    def read_reply(self) -> dict | None:
        """The reply to the current child, or None when the worker died first."""
        line = self.replies.readline()
        return json.loads(line) if line else None

    def death(self) -> str:
        """Why the worker is gone, once it is."""
        code = self.proc.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return (
            f"its sweep worker (pid {self.proc.pid}) died while training it ({how}); re-run the sweep into its "
            "parent to resume it from its snapshot"
        )

    def stop(self) -> None:
        """SIGTERM to the worker's session (the child it trains ends KILLED)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.replies.close()

    def _signal(self, signum: int) -> None:
        if self.proc.poll() is None:
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
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.replies.close()


class _Forked:
    """A forked worker's ``multiprocessing.Process`` with the part of ``Popen`` the pool uses."""

    def __init__(self, process: BaseProcess) -> None:
        self.process, self.pid = process, process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("resnorm.sweep.worker", timeout)
        return self.process.exitcode


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
    are still under way); with GPUs, worker i sees GPU i % gpus."""

    def __init__(self, project_dir: str, size: int, gpus: int = 0) -> None:
        self.project_dir, self.gpus = project_dir, gpus
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

    def close(self) -> None:
        """End every worker: all are told at once, then waited for (each takes a moment to exit)."""
        for w in self.workers:
            w.end_input()
        for w in self.workers:
            w.close()

    def run(self, ctx: SweepContext, children: Sequence[Child]) -> dict[str, str]:
        """Train ``children`` on the workers, one child per idle worker; returns each child's final
        status by name. A worker that dies fails its child and another takes its place."""
        client = MlflowClient()
        statuses: dict[str, str] = {}
        queue = list(children)

        def report(child: Child, run_id: str, status: str) -> None:
            statuses[child.name] = status
            print(f"[{len(statuses)}/{len(children)}] {child.name}: {status} (run {run_id})", flush=True)

        try:
            while queue or any(w.child for w in self.workers):
                self._hand_out(client, ctx, queue)
                busy = {w.replies: w for w in self.workers if w.child is not None}
                ready, _, _ = select.select(list(busy), [], [], 1.0)
                for replies in ready:
                    w = busy[replies]
                    child, run_id = w.child, w.run_id
                    w.child = None
                    if w.read_reply() is None:  # the worker died: fail its child; another takes its place
                        report(child, run_id, settle(client, run_id, w.death()))
                    else:
                        report(child, run_id, settle(client, run_id, "the training ended without closing its run"))
        except BaseException:
            _stop(client, self.workers, report)
            raise
        return statuses

    def _hand_out(self, client: MlflowClient, ctx: SweepContext, queue: list[Child]) -> None:
        for slot, w in enumerate(self.workers):
            if not queue:
                return
            if w.proc.poll() is not None:  # it died idle (or after its child): a new one in its place
                w.close()
                self.workers[slot] = w = self._spawn(slot)
            if w.child is None:
                child = queue.pop(0)
                w.give(child, child.launch.resume or create_child_run(client, ctx, child))


def _stop(client: MlflowClient, workers: list[Worker], report) -> None:
    """Stop the busy workers (their children end KILLED) and wait, bounded, until each has answered."""
    busy = [w for w in workers if w.child is not None]
    for w in busy:
        w.stop()
    deadline = time.monotonic() + STOP_SECONDS
    for w in busy:
        ready, _, _ = select.select([w.replies], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            w.read_reply()
        report(w.child, w.run_id, settle(client, w.run_id, "its sweep was stopped"))
        w.child = None
