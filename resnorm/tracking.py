"""Everything MLflow: the run, its params, per-epoch metrics, artifacts, the model and the registry.

Nothing here trains. ``training_run`` opens (or, under ``mlflow run``, resumes) the run;
the ``RunLogger`` it yields is the engine's per-epoch callback and logs the result at the end.
Per-epoch metrics go through an ``Outbox`` so that a tracking server outage never stalls training.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator

import mlflow
import torch
from mlflow.data import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from resnorm import names, serving, snapshots
from resnorm.config import TrainConfig
from resnorm.data import SPLITS, DataBundle
from resnorm.engine import EpochStats, TrainResult
from resnorm.errors import ConfigError, TrackingUnavailable, one_line
from resnorm.metrics import per_class_report
from resnorm.model import ResNet
from resnorm.outbox import Outbox, server_answers
from resnorm.plots import confusion_matrix, curves

DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
DATASET_LOG_ATTEMPTS = 5  # see RunLogger.log_dataset
TAG_RESUMED = "resnorm.resumed_run"  # on the run `mlflow run -P resume=...` made: the run it continued
SYNC_TIMEOUT_SECONDS = float(os.environ.get("RESNORM_SYNC_TIMEOUT", "300"))  # wait for the server at the end


def check_tracking_server(timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking server does not answer.

    MLflow's own client would retry for minutes before saying anything.
    """
    uri = mlflow.get_tracking_uri()
    why = server_answers(uri, timeout)
    if why is not None:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} does not answer ({why}); start the server or set MLFLOW_TRACKING_URI to one that runs"
        )


def _give_up_quickly() -> None:
    """The server is away: let MLflow's remaining calls on the way out fail at once, not retry."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"


def use_default_experiment(name: str = names.EXPERIMENT) -> None:
    """Log to experiment ``name`` unless the environment names one (``mlflow run`` does)."""
    if not any(k in os.environ for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")):
        experiment = mlflow.set_experiment(name)
        # When another process creates the experiment at the same moment, MLflow's set_experiment
        # returns it without making it the active one, and the run would land in Default. Setting
        # it by id always activates it.
        mlflow.set_experiment(experiment_id=experiment.experiment_id)


def fail_pending_run(reason: str) -> None:
    """Mark the run that ``mlflow run`` created for this process FAILED, with ``reason``.

    For errors found before the script opens its run (bad parameters, bad data), so the run
    ``mlflow run`` made is not left RUNNING without a word of why.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or server_answers(mlflow.get_tracking_uri()) is not None:
        return
    client = MlflowClient()
    client.set_tag(run_id, names.TAG_ERROR, reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def log_new_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log the params the run does not have yet, in batches.

    `mlflow run` has already logged the -P values in the user's spelling ("0.10"); logging the
    same key again with another spelling fails, so only the missing keys are sent.
    """
    existing = client.get_run(run_id).data.params
    missing = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(missing), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[i : i + MAX_PARAMS_PER_BATCH])


class RunLogger:
    """Writes one training run to MLflow through an explicit client and run id."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.checkpoint = snapshots.path_for(run_id)
        self.outbox = Outbox(run_id, self.client, mlflow.get_tracking_uri())
        # An epoch's metrics go out only once the stored snapshot holds that epoch: a resume on
        # another machine then never trains (and logs) an epoch a second time.
        self.held: list[Metric] = []
        self._held_lock = threading.Lock()
        self.uploader = snapshots.Uploader(run_id, self.client, self.checkpoint, self._release,
                                           mlflow.get_tracking_uri())

    def log_config(
        self, cfg: TrainConfig, data: DataBundle, requested_device: str, device: torch.device, mode: str = "auto"
    ) -> None:
        params = cfg.as_params()
        params["num_classes"] = str(data.num_classes)
        params["device"] = requested_device  # as asked (auto, cpu, cuda); the tag says which one ran
        params["mode"] = mode  # as asked (auto, plain, fast); the resnorm.speed tag says what ran
        log_new_params(self.client, self.run_id, params)
        # A sweep names its children before they start (``-s{seed}`` when seeds vary): keep that.
        if not self.client.get_run(self.run_id).info.run_name.startswith(cfg.run_name()):
            self.client.update_run(self.run_id, name=cfg.run_name())
        self.client.set_tag(self.run_id, names.TAG_DEVICE, str(device))

    def log_dataset(self, data: DataBundle) -> None:
        """Record each split as a metadata-only MLflow dataset input (source, digest, context)."""
        local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
        short = os.path.basename(data.name.rstrip("/")) or data.name
        inputs = [
            DatasetInput(
                MetaDataset(local(data.source), name=f"{short}-{split}", digest=data.digest(split))._to_mlflow_entity(),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[split])],
            )
            for split in SPLITS
        ]
        # The server adds a dataset it has not seen with check-then-insert, so two runs that log the
        # same new dataset at the same moment (a parallel sweep, eight writers) can lose that race
        # with a unique-key error. The winner's row is then there: logging inputs is idempotent, so
        # trying again shortly after succeeds.
        for attempt in range(DATASET_LOG_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException:
                if attempt == DATASET_LOG_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)

    def __call__(self, stats: EpochStats) -> None:
        """The engine's per-epoch callback: one batch per epoch, step = epoch, sent in the background
        once the artifact store's snapshot holds the epoch (the engine saved it locally just before).

        The epoch's own timestamp makes a re-sent epoch identical to the first, so MLflow keeps one.
        """
        now = stats.timestamp_ms or int(time.time() * 1000)
        metrics = [Metric(key, float(getattr(stats, key)), now, stats.epoch) for key in names.EPOCH_METRICS]
        with self._held_lock:
            self.held.extend(metrics)
        self.uploader.offer(stats.epoch)

    def _release(self, epoch: int) -> None:
        """The stored snapshot holds ``epoch``: its metrics (and earlier ones) may go out."""
        with self._held_lock:
            ready = [m for m in self.held if m.step <= epoch]
            self.held = [m for m in self.held if m.step > epoch]
        self.outbox.put(ready)

    def close(self) -> None:
        """Stop the background senders (what they still hold is in the local snapshot)."""
        self.uploader.close()
        self.outbox.close()

    def sync(self, timeout: float = SYNC_TIMEOUT_SECONDS) -> None:
        """Wait (bounded) until every epoch has reached the server; say how to finish if it has not."""
        if self.outbox.pending or self.held:
            print(f"waiting up to {timeout:g}s for the tracking server to take {self.outbox.pending + len(self.held)}"
                  f" queued metrics ({self.outbox.last_error or self.uploader.last_error or 'sending'})", flush=True)
        deadline = time.monotonic() + timeout
        if not self.uploader.drain(timeout) or not self.outbox.drain(max(0.0, deadline - time.monotonic())):
            raise TrackingUnavailable(
                f"tracking server {mlflow.get_tracking_uri()!r} has not answered for {timeout:g}s "
                f"({self.outbox.last_error or self.uploader.last_error}); {self.outbox.pending + len(self.held)} metrics "
                f"are not sent yet. Nothing is lost: "
                f"the checkpoint {self.checkpoint} holds every epoch. When the server is back, run "
                f"`python entrypoints/train.py --resume {self.run_id}` to send them and log the model"
            )

    def log_result(self, cfg: TrainConfig, data: DataBundle, result: TrainResult) -> int | None:
        """Final metrics, figures, per-class report and the model; returns the registered version."""
        self.sync()
        self.client.set_tag(self.run_id, names.TAG_SPEED, result.speed.describe())
        if result.compile_fallback:
            self.client.set_tag(self.run_id, names.TAG_COMPILE_FALLBACK, result.compile_fallback[:5000])
        final = {**result.final_metrics(), **result.timings()}
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()])

        h = result.history
        epochs = [s.epoch for s in h]
        fig = curves(
            epochs,
            {
                "loss": {"train": [s.train_loss for s in h], "val": [s.val_loss for s in h]},
                "accuracy": {"train": [s.train_accuracy for s in h], "val": [s.val_accuracy for s in h]},
            },
            title=cfg.run_name(),
        )
        self.client.log_figure(self.run_id, fig, "curves.png")
        test = result.evaluations["test"]
        fig = confusion_matrix(test.labels, test.predictions, data.classes, title=f"{cfg.run_name()} (test)")
        self.client.log_figure(self.run_id, fig, "confusion_matrix_test.png")
        report = per_class_report(test.labels, test.predictions, data.classes)
        self.client.log_dict(self.run_id, report, "classification_report_test.json")
        self.client.log_dict(self.run_id, {"classes": list(data.classes)}, "classes.json")
        return self.log_model(cfg, data, result, final[names.final_metric("val", "accuracy")])

    def log_model(self, cfg: TrainConfig, data: DataBundle, result: TrainResult, val_accuracy: float) -> int:
        """Log the kept model (pt2, eval mode, CPU) and its checkpoint, register it and move
        ``champion`` if it is better."""
        model = result.model.to("cpu").eval()
        self.log_checkpoint(cfg, data, model)
        # Two real test images: a batch of one would fix the exported batch size to 1.
        example = data.test.images[:2].float().div(255).numpy()
        name = names.registered_model(cfg.norm)
        info = serving.log_model(
            model,
            name=names.MODEL_ARTIFACT,
            classes=data.classes,
            input_example=example,
            registered_model_name=name,
            run_id=self.run_id,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
        version = int(info.registered_model_version)
        self.client.set_model_version_tag(name, str(version), names.final_metric("val", "accuracy"), str(val_accuracy))
        promote_if_better(self.client, name, version, val_accuracy)
        return version

    def log_checkpoint(self, cfg: TrainConfig, data: DataBundle, model: ResNet) -> None:
        """The state dict and what rebuilds the ResNet around it (``resnorm.checkpoint.load_module``)."""
        config = {
            "n": cfg.n,
            "num_classes": data.num_classes,
            "norm": cfg.norm,
            "in_channels": data.channels,
            "groups": cfg.groups,
            "classes": list(data.classes),
            "image_size": cfg.image_size,
            "data": cfg.data,
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(names.CHECKPOINT_WEIGHTS))
            torch.save(model.state_dict(), path)
            self.client.log_artifact(self.run_id, path, os.path.dirname(names.CHECKPOINT_WEIGHTS))
        self.client.log_dict(self.run_id, config, names.CHECKPOINT_CONFIG)


def champion_val_accuracy(client: MlflowClient, name: str) -> float | None:
    """``best_val_accuracy`` of the run behind ``name@champion``; None when no version holds it."""
    try:
        current = client.get_model_version_by_alias(name, names.CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    value = client.get_run(current.run_id).data.metrics.get(names.final_metric("val", "accuracy"))
    return None if value is None else float(value)


def promote_if_better(client: MlflowClient, name: str, version: int, val_accuracy: float) -> bool:
    """Point ``champion`` at ``version`` when no version holds it or its val accuracy is lower."""
    current = champion_val_accuracy(client, name)
    if current is not None and val_accuracy <= current:
        return False
    client.set_registered_model_alias(name, names.CHAMPION, str(version))
    # Runs of one norm finishing together (a parallel sweep) can both read the old champion and
    # both move the alias, the worse one last. Every mover re-reads the versions after its move and
    # settles on the best of them, so the last one to do so leaves the alias on the best version.
    best = best_version(client, name)
    if best is not None and best != version:
        client.set_registered_model_alias(name, names.CHAMPION, str(best))
    return best in (None, version)


def best_version(client: MlflowClient, name: str) -> int | None:
    """The version with the highest recorded val accuracy (the earliest of equals), or None."""
    key = names.final_metric("val", "accuracy")
    scored = [(-float(v.tags[key]), int(v.version)) for v in client.search_model_versions(f"name = '{name}'")
              if key in v.tags]
    return min(scored)[1] if scored else None


def resumable_config(run_id: str) -> TrainConfig:
    """The configuration of an interrupted run, read from its snapshot: the one in the run's
    artifact store, or this machine's copy when that holds more epochs."""
    from resnorm.sweep import config_from_params

    check_tracking_server()
    client = MlflowClient()
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:
        raise ConfigError(f"resume {run_id!r}: no such run at {mlflow.get_tracking_uri()!r}") from None
    if status == RunStatus.to_string(RunStatus.FINISHED):
        raise ConfigError(f"resume {run_id!r}: the run has FINISHED; there is nothing to resume")
    path = snapshots.fetch(client, run_id)
    if path is None:
        raise ConfigError(
            f"resume {run_id!r}: no checkpoint, neither in the run's artifacts nor at {snapshots.path_for(run_id)}; "
            "the run ended before its first epoch did, so start it again"
        )
    return config_from_params(snapshots.load(path)["config"])


@contextlib.contextmanager
def training_run(
    cfg: TrainConfig,
    data: DataBundle,
    requested_device: str,
    device: torch.device,
    resume: str = "",
    mode: str = "auto",
) -> Iterator[RunLogger]:
    """Open the run (or resume the one ``mlflow run`` made, or ``resume``), log config and data,
    yield the logger.

    An exception ends the run FAILED with its message in the ``resnorm.error`` tag; a tracking
    server that went away leaves it RUNNING, to be resumed from its checkpoint.
    """
    check_tracking_server()
    pointer = os.environ.get("MLFLOW_RUN_ID")
    if resume and pointer and pointer != resume:
        # `mlflow run -P resume=ID` made a new run before this script started: point it at ID.
        MlflowClient().set_tag(pointer, TAG_RESUMED, resume)
        MlflowClient().update_run(pointer, name=f"resume-{resume[:8]}")
    if not resume:
        use_default_experiment()
    held = snapshots.lock(resume) if resume else None  # before the run is touched
    # Under `mlflow run` (MLFLOW_RUN_ID) the run exists: a run_name here would rename it, and a sweep's
    # child would lose its `-s{seed}`; log_config names a run that has no name of ours yet.
    named = None if resume or pointer else cfg.run_name()
    run = mlflow.start_run(run_id=resume or None, run_name=named)
    held = held or snapshots.lock(run.info.run_id)
    logger = RunLogger(run.info.run_id)
    try:
        if not resume:
            logger.log_config(cfg, data, requested_device, device, mode)
            logger.log_dataset(data)
        yield logger
    except TrackingUnavailable:
        _give_up_quickly()
        logger.close()
        raise
    except BaseException as e:
        logger.close()
        logger.client.set_tag(logger.run_id, names.TAG_ERROR, one_line(e))
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    logger.close()
    mlflow.end_run()
    # The run is complete in MLflow; nothing left to resume (a FINISHED run is never resumed, so a
    # copy that outlives this, here or in the store, is ignored).
    snapshots.forget(logger.client, logger.run_id)
    snapshots.remove(logger.checkpoint)
    held.close()
