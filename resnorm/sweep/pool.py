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

import os
import select
import time
from collections.abc import Sequence

from mlflow.tracking import MlflowClient

from resnorm.config import TrainConfig
from resnorm.sweep.child import Child, SweepContext, create_child_run, settle
from resnorm.sweep.workers import Worker
from resnorm.tracking import KILLED

STOP_SECONDS = 120.0  # how long a stopped child may take to close its run


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
