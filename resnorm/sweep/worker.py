"""A sweep's worker: one long-lived process that trains the children it is given, one after another.

The local pool forks its workers from the fork server (``resnorm.sweep.forkserver``), which has
imported this module and so everything a training needs; a Ray trial starts one as a new process:

    python -m resnorm.sweep.worker REPLY_FD SWEEP_PID

Either way it reads one request per line (JSON: the run made for the child, its ``TrainConfig``
fields and its ``Launch``; on stdin for the command above), trains it with
``resnorm.job.train_job`` - the function the ``train`` entry point calls, inside the same error
boundary (``resnorm.cli.guard``) - and writes one reply per child (JSON: the run id and the exit
code the entry point would have had). It ends when its requests end.

SIGTERM while a child trains ends that child KILLED (resumable) and the worker with it, as it
ends a ``train`` process. Workers run in sessions of their own, so a terminal's Ctrl-C reaches
only the sweep, which stops its workers itself; a sweep that dies without doing so (``kill -9``)
has its workers sent SIGTERM (``resnorm.signals.stop_with_parent``, ``stop_when_gone``), so none
trains on as an orphan holding its run's lock.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import sys
import tempfile

from resnorm.machine import prefer_passive_wait

prefer_passive_wait()  # before torch loads OpenMP (the pool sets it in the environment too)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401 - every training's optimizer loads it: once in the fork server

from resnorm.cli import best_effort_output, guard, leave  # noqa: E402
from resnorm.job import train_job  # noqa: E402
from resnorm.signals import stop_when_gone, stop_with_parent  # noqa: E402
from resnorm.sweep.child import read_request  # noqa: E402
from resnorm.sweep.forkserver import in_fork_server  # noqa: E402

# What a process's first training loads on first use (1.2 s on one core, measured by
# comparing sys.modules before and after one): loaded here, so that the fork server pays it once
# for every worker. A name that is not there (IPython is optional) is skipped.
FIRST_USE = (
    "mlflow.store.tracking.sqlalchemy_store",  # the SQL stores (SQLAlchemy, alembic)
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.system_metrics.system_metrics_monitor",
    "mlflow.models.display_utils",
    "git",  # a run's source commit
    "IPython",  # MLflow's start_run looks for Databricks' dbutils through it, when it is installed
    "torch.export._trace",  # torch.export, and what its tracing and saving load
    "torch.export.pt2_archive",
    "torch._export.serde.serialize",
    "torch._functorch.partitioners",
    "matplotlib.backends.backend_agg",
    "matplotlib.pyplot",
)
for _name in FIRST_USE:
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)


def warm_model_logging() -> None:
    """What a process's first logged model pays once, paid here: torch.export's first trace and MLflow's map
    of installed packages (which it reads to check a model's pip requirements). In the fork server, so that
    no worker pays it: a worker's first child saved its model in 1.9 s, later ones in 0.7-1.0 s (a ResNet-8
    at 8 px, this 2-core machine); the fork server spends about 1.5 s on it, beside the sweep's own start.
    Nothing here touches CUDA or starts a thread, so the workers forked after it are as before."""
    from resnorm import serving
    from resnorm.model import ResNet
    from resnorm.norms import get_norm

    model = ResNet(n=1, num_classes=2, norm_layer=get_norm("torch_bn")).eval()
    with tempfile.TemporaryDirectory() as folder:
        serving.save_model(
            os.path.join(folder, "model"),
            pytorch_model=model,
            classes=["a", "b"],
            input_example=np.zeros((2, 3, 8, 8), np.float32),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


if in_fork_server():
    warm_model_logging()


def serve(requests, replies: int) -> None:
    """Train every request of ``requests`` (lines), answering each on the descriptor ``replies``. Its
    printing is best effort, as an entry point's: a sweep whose output was closed (``| head -1``) still
    trains every child to its true end."""
    best_effort_output()
    for line in requests:
        cfg, launch, run_id = read_request(line)
        code = guard(functools.partial(_train, cfg, launch, run_id), run_id)
        sys.stdout.flush()
        sys.stderr.flush()
        leaving = code == 130  # stopped (SIGTERM, Ctrl-C): it ends, and says so, so that it is given nothing more
        try:  # one short line: one write, whole or not at all
            os.write(replies, (json.dumps({"run_id": run_id, "code": code, "leaving": leaving}) + "\n").encode())
        except BrokenPipeError:  # the sweep is gone (killed): no one to answer, nothing more to train
            return
        if leaving:
            return
        torch.compiler.reset()  # a compiled child's graphs are of its model only; let them go


def _train(cfg, launch, run_id: str) -> None:
    print(train_job(None if launch.resume else cfg, launch, run_id).summary(), flush=True)


def forked(
    env: dict[str, str], cpus: set[int], sweep_pid: int, requests: int, replies: int, stdout: int, stderr: int
) -> None:
    """A worker the fork server forked for the sweep ``sweep_pid``: its own session, the sweep's
    ``env``, CPUs and output streams (what a process the sweep started would have had, not what the
    server started with), requests and replies on the pipe ends ``requests`` and ``replies``."""
    os.setsid()
    os.sched_setaffinity(0, cpus)
    for fd, target in ((stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    stop_when_gone(sweep_pid)
    with os.fdopen(requests) as lines:
        serve(lines, replies)
    leave(0)


def main() -> None:
    reply_fd, sweep_pid = int(sys.argv[1]), int(sys.argv[2])
    stop_with_parent(sweep_pid)
    serve(sys.stdin, reply_fd)
    leave(0)  # every child's run is closed and answered for


if __name__ == "__main__":
    main()
