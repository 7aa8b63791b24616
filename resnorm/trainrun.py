"""A training's MLflow run from start to end: opened (or, under ``mlflow run`` or a sweep, the one made for
it; or the interrupted run it resumes), and ended with a true status whatever happens inside: FINISHED
with the model; FAILED with the reason (and the traceback as an artifact); KILLED when interrupted
(SIGTERM, Ctrl-C), resumable from its snapshot; RUNNING only when the server went away, with the resume
command printed. What the run holds is written by ``resnorm.runlog.RunLogger``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import mlflow
import torch
from mlflow.tracking import MlflowClient

from resnorm import names, snapshots
from resnorm.bundle import DataBundle
from resnorm.config import Launch, TrainConfig
from resnorm.errors import Interrupted, TrackingUnavailable, one_line
from resnorm.jobruns import check_own_run, record_failure
from resnorm.runlog import RunLogger, resume_command
from resnorm.tracking import (
    FAILED,
    KILLED,
    SYSTEM_METRICS_INTERVAL,
    check_tracking_server,
    mark_model_training,
    system_metrics_interval,
    use_default_experiment,
)
from resnorm.waiting import give_up_quickly


def _open(cfg: TrainConfig, resume: str, pointer: str | None):
    """Start (or resume) the run; the resumed run's lock is taken first, so a refusal touches no run.
    ``pointer``: the run made for this job (by ``mlflow run`` or a sweep), checked to be one."""
    held = snapshots.lock(resume) if resume else None
    try:
        if pointer and pointer != resume:
            check_own_run(pointer, None if resume else cfg)  # `mlflow run -P resume=ID` logged the defaults
        if resume and pointer and pointer != resume:
            # `mlflow run -P resume=ID` made a new run before this script started: point it at ID.
            MlflowClient().set_tag(pointer, names.TAG_RESUMED, resume)
            MlflowClient().update_run(pointer, name=f"resume-{resume[:8]}")
        if not resume and not pointer:
            use_default_experiment()
        # A run made for this job exists: a run_name here would rename it, and a sweep's child would
        # lose its `-s{seed}`; log_config names a run that has no name of ours yet.
        named = None if resume or pointer else cfg.run_name()
        # MLflow's system metrics (CPU, memory, and the GPU with nvidia-ml-py): cost beside accuracy,
        # sampled as often as the checked MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says (2 s if unset).
        os.environ.setdefault(SYSTEM_METRICS_INTERVAL, f"{system_metrics_interval():g}")
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not three INFO lines a run
        run = mlflow.start_run(run_id=resume or pointer or None, run_name=named, log_system_metrics=True)
        mark_model_training(MlflowClient(), run.info.experiment_id)
        return run, held
    except BaseException:
        if held is not None:
            held.close()
        raise


@contextlib.contextmanager
def training_run(
    cfg: TrainConfig, data: DataBundle, launch: Launch, device: torch.device, run_id: str | None = None
) -> Iterator[RunLogger]:
    """Open the run, log config and data, yield the logger; end the run with a true status.

    An exception ends the run FAILED with its message in the ``resnorm.error`` tag (the traceback
    as an artifact); an interrupt ends it KILLED; a tracking server that went away leaves it
    RUNNING, to be resumed from its snapshot. ``run_id``: the run made for this training (by ``mlflow
    run`` or a sweep), if any; else a new run is started (or ``launch.resume``'s continued).
    """
    check_tracking_server()
    run, held = _open(cfg, launch.resume, run_id)
    logger = RunLogger(run.info.run_id)
    try:
        held = held or snapshots.lock(logger.run_id)
        if not launch.resume:
            logger.log_config(cfg, data, launch, device)
            logger.log_dataset(data)
        yield logger
        logger.close()
        if launch.resume and names.TAG_ERROR in logger.client.get_run(logger.run_id).data.tags:
            logger.client.delete_tag(logger.run_id, names.TAG_ERROR)  # an earlier attempt's reason no longer holds
        mlflow.end_run()
    except TrackingUnavailable:
        give_up_quickly()
        logger.close()
        logger.withdraw()
        _release(held)
        raise
    except KeyboardInterrupt as e:
        logger.close()
        logger.withdraw()
        reason = f"{str(e) or 'interrupted'}; continue it with `{resume_command(logger.run_id)}`"
        record_failure(logger.client, logger.run_id, reason)
        mlflow.end_run(KILLED)
        _release(held)
        raise Interrupted(reason) from e
    except BaseException as e:
        logger.close()
        logger.withdraw()
        record_failure(logger.client, logger.run_id, one_line(e), e)
        mlflow.end_run(FAILED)
        _release(held)
        raise
    # The run is complete in MLflow; nothing left to resume (a FINISHED run is never resumed, so a
    # copy that outlives this, here or in the store, is ignored).
    snapshots.forget(logger.client, logger.run_id)
    snapshots.remove(logger.snapshot)
    held.close()


def _release(held) -> None:
    if held is not None:
        held.close()
