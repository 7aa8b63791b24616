"""A sweep's worker: one long-lived process that trains the children it is given, one after another.

    python -m resnorm.sweep.worker REPLY_FD SWEEP_PID

It reads one request per line on stdin (JSON: the run made for the child, its ``TrainConfig``
fields and its ``Launch``), trains it with ``resnorm.job.train_job`` - the function the ``train``
entry point calls, inside the same error boundary (``resnorm.cli.guard``) - and writes one reply
per child on the file descriptor ``REPLY_FD`` (JSON: the run id and the exit code the entry point
would have had). It ends when stdin closes. Imports are paid once per worker, not once per child.

SIGTERM while a child trains ends that child KILLED (resumable) and the worker with it, as it
ends a ``train`` process. The pool (``resnorm.sweep.pool``) starts workers in sessions of their
own, so a terminal's Ctrl-C reaches only the sweep, which stops its workers itself; a sweep that
dies without doing so (``kill -9``) has the kernel send its workers SIGTERM (Linux's parent-death
signal), so none trains on as an orphan holding its run's lock.
"""

from __future__ import annotations

import functools
import json
import os
import sys

from resnorm.machine import prefer_passive_wait

prefer_passive_wait()  # before torch loads OpenMP (the pool sets it in the environment too)

import torch  # noqa: E402

from resnorm.cli import guard, leave, stop_with_parent  # noqa: E402
from resnorm.job import train_job  # noqa: E402
from resnorm.sweep.child import read_request  # noqa: E402


def serve(requests, replies) -> None:
    """Train every request of ``requests`` (lines), answering each on ``replies``."""
    for line in requests:
        cfg, launch, run_id = read_request(line)
        code = guard(functools.partial(_train, cfg, launch, run_id), run_id)
        sys.stdout.flush()
        sys.stderr.flush()
        replies.write(json.dumps({"run_id": run_id, "code": code}) + "\n")
        replies.flush()
        if code == 130:  # stopped (SIGTERM, Ctrl-C): the sweep is stopping; so does the worker
            return
        torch.compiler.reset()  # a compiled child's graphs are of its model only; let them go


def _train(cfg, launch, run_id: str) -> None:
    print(train_job(None if launch.resume else cfg, launch, run_id).summary(), flush=True)


def main() -> None:
    reply_fd, sweep_pid = int(sys.argv[1]), int(sys.argv[2])
    stop_with_parent(sweep_pid)
    with os.fdopen(reply_fd, "w") as replies:
        serve(sys.stdin, replies)
    leave(0)  # every child's run is closed and answered for


if __name__ == "__main__":
    main()
