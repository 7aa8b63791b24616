"""One training, start to end, as the ``train`` entry point and a sweep's workers run it: threads,
the tracking check, the data, the MLflow run, the loop, the kept model registered.

The entry point (``entrypoints/train.py``) parses its options into a ``TrainConfig`` and a
``Launch`` and calls ``train_job``; a sweep's worker (``resnorm.sweep.worker``) calls the same
function for each of its children, in one long-lived process, so a child costs its epochs and its
model logging, not a new interpreter's imports. Errors and signals are turned into a run status
by ``resnorm.cli.guard`` around either caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from resnorm import names
from resnorm.config import Launch, TrainConfig, resolve_device
from resnorm.data import load_data
from resnorm.engine import train as fit
from resnorm.errors import ConfigError
from resnorm.fast import resolve_speed
from resnorm.resume import resumable
from resnorm.signals import HeldSignals
from resnorm.tracking import check_tracking_server
from resnorm.trainrun import training_run
from resnorm.waiting import sync_timeout


@dataclass(frozen=True)
class JobResult:
    run_id: str
    run_name: str
    best_epoch: int
    test_accuracy: float
    model: str  # the registered model's name
    version: int

    def summary(self) -> str:
        return (
            f"run {self.run_id} ({self.run_name}): best epoch {self.best_epoch}, test accuracy "
            f"{self.test_accuracy:.4f}, registered {self.model} version {self.version}"
        )


def train_job(cfg: TrainConfig | None, launch: Launch, run_id: str | None = None) -> JobResult:
    """Train ``cfg`` (None: the configuration of the run ``launch.resume`` continues) into a run:
    ``run_id`` when one was made for this job (by ``mlflow run`` or a sweep), else a new one.

    A resumed run keeps the threads it trained with and must find the data it trained on."""
    sync_timeout()  # a malformed RESNORM_SYNC_TIMEOUT is refused now, not after the training
    check_tracking_server()  # before any work: a wrong URI should cost seconds, not a data load
    resumed = resumable(launch.resume) if launch.resume else None
    if resumed is not None:
        cfg = resumed.config
        launch = dataclasses.replace(launch, threads=resumed.threads or launch.threads)
    if cfg is None:
        raise ConfigError("train_job needs a configuration, or a run to resume (launch.resume)")
    torch.set_num_threads(launch.torch_threads())
    device = resolve_device(launch.device)
    speed = resolve_speed(launch.mode, device, cfg.batch_size, launch.compile_mode)
    data = load_data(cfg.data, cfg.image_size)
    if resumed is not None:
        resumed.check_data(data)
    with HeldSignals() as held, training_run(cfg, data, launch, device, run_id) as run:
        result = fit(cfg, data, device, speed, on_epoch=run, snapshot_path=run.snapshot)
        held.start()  # from here a signal waits until the run has FINISHED with its model
        version = run.log_result(cfg, data, result)
    test_accuracy = result.final_metrics()[names.final_metric("test", "accuracy")]
    return JobResult(
        run.run_id,
        run.client.get_run(run.run_id).info.run_name,
        result.best_epoch,
        test_accuracy,
        names.registered_model(cfg.norm),
        version,
    )
