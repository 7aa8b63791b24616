"""What one training writes to its MLflow run: params, inputs, every epoch's metrics (through an
``Outbox``, so that a tracking server outage never stalls training, and only once the stored snapshot
holds the epoch), and at the end its scores, figures and the model, registered. ``RunLogger`` is the
engine's per-epoch callback; ``resnorm.trainrun.training_run`` opens the run, yields the logger and
ends the run with a true status."""

from __future__ import annotations

import os
import random
import threading
import time

import mlflow
import torch
from mlflow.data import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from resnorm import names, serving, snapshots, weights
from resnorm.bundle import SPLITS, DataBundle
from resnorm.config import Launch, TrainConfig
from resnorm.engine import EpochStats, TrainResult
from resnorm.errors import TrackingUnavailable, one_line, warn
from resnorm.metrics import per_class_report
from resnorm.outbox import Outbox
from resnorm.plots import confusion_matrix, curves
from resnorm.registry import promote_if_better, withdraw
from resnorm.resume import DATASET_CONTEXTS, split_sizes
from resnorm.tracking import (
    log_new_params,
)
from resnorm.waiting import sync_timeout

DATASET_LOG_ATTEMPTS = 5  # see RunLogger.log_dataset


def resume_command(run_id: str) -> str:
    return f"python entrypoints/train.py --resume {run_id}"


class RunLogger:
    """Writes one training run to MLflow through an explicit client and run id."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.snapshot = snapshots.path_for(run_id)
        self.outbox = Outbox(run_id, self.client, mlflow.get_tracking_uri())
        # An epoch's metrics go out only once the stored snapshot holds that epoch: a resume on
        # another machine then never trains (and logs) an epoch a second time.
        self.held: list[Metric] = []
        self._held_lock = threading.Lock()
        self.uploader = snapshots.Uploader(run_id, self.client, self.snapshot, self._release, mlflow.get_tracking_uri())
        self.registered: tuple[str, int] | None = None  # (model, version) this run registered

    def log_config(self, cfg: TrainConfig, data: DataBundle, launch: Launch, device: torch.device) -> None:
        params = {
            **cfg.as_params(),
            **launch.as_params(),
            names.PARAM_NUM_CLASSES: str(data.num_classes),
            names.PARAM_TORCH_THREADS: str(torch.get_num_threads()),
        }
        log_new_params(self.client, self.run_id, params)
        # A sweep names its children before they start (``-s{seed}`` when seeds vary): keep that.
        if not self.client.get_run(self.run_id).info.run_name.startswith(cfg.run_name()):
            self.client.update_run(self.run_id, name=cfg.run_name())
        self.client.set_tag(self.run_id, names.TAG_DEVICE, str(device))
        self.client.set_tag(self.run_id, names.TAG_VERSIONS, f"torch {torch.__version__}, mlflow {mlflow.__version__}")
        self.client.set_tag(self.run_id, names.TAG_SPLIT_SIZES, split_sizes(data))

    def log_dataset(self, data: DataBundle) -> None:
        """Record each split as a metadata-only MLflow dataset input (source, digest, context)."""
        local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
        short = os.path.basename(data.name.rstrip("/")) or data.name
        inputs = [
            DatasetInput(
                MetaDataset(  # type: ignore[abstract]  # MetaDataset is instantiable: its profile is optional
                    local(data.source),  # type: ignore[operator]  # a registered source is a class
                    name=f"{short}-{split}",
                    digest=data.digest(split),
                )._to_mlflow_entity(),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[split])],
            )
            for split in SPLITS
        ]
        # The server adds a dataset it has not seen with check-then-insert, so two runs that log the
        # same new dataset at the same moment (a parallel sweep, eight writers) can lose that race
        # with a unique-key error. The winner's row is then there: logging inputs is idempotent, so
        # trying again shortly after succeeds.
        if data.duplicates:  # the same image in two splits: scores overstate; say so where the run is read
            text = f"{len(data.duplicates)}: " + "; ".join(data.duplicates)
            self.client.set_tag(self.run_id, names.TAG_DUPLICATES, text[:5000])
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

    def sync(self, timeout: float | None = None) -> None:
        """Wait (bounded: ``RESNORM_SYNC_TIMEOUT``) until every epoch has reached the server; say how
        to finish if it has not."""
        timeout = sync_timeout() if timeout is None else timeout
        if self.outbox.pending or self.held:
            print(
                f"waiting up to {timeout:g}s for the tracking server to take {self.outbox.pending + len(self.held)}"
                f" queued metrics ({self.outbox.last_error or self.uploader.last_error or 'sending'})",
                flush=True,
            )
        deadline = time.monotonic() + timeout
        if not self.uploader.drain(timeout) or not self.outbox.drain(max(0.0, deadline - time.monotonic())):
            raise TrackingUnavailable(
                f"tracking server {mlflow.get_tracking_uri()!r} has not answered for {timeout:g}s "
                f"({self.outbox.last_error or self.uploader.last_error}); {self.outbox.pending + len(self.held)} "
                f"metrics are not sent yet. Nothing is lost: "
                f"the snapshot {self.snapshot} holds every epoch. When the server is back, run "
                f"`{resume_command(self.run_id)}` to send them and log the model"
            )

    def log_result(self, cfg: TrainConfig, data: DataBundle, result: TrainResult) -> int:
        """Final metrics, figures, per-class report and the model; returns the registered version."""
        self.sync()
        self.client.set_tag(self.run_id, names.TAG_SPEED, result.speed.describe())
        if result.compile_fallback:
            self.client.set_tag(self.run_id, names.TAG_COMPILE_FALLBACK, result.compile_fallback[:5000])
        final = {**result.final_metrics(), **result.timings()}
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()])
        self.log_figures(cfg, data, result)
        return self.log_model(cfg, data, result, final[names.final_metric("val", "accuracy")])

    def log_figures(self, cfg: TrainConfig, data: DataBundle, result: TrainResult) -> None:
        h = result.history
        series = {
            "loss": {"train": [s.train_loss for s in h], "val": [s.val_loss for s in h]},
            "accuracy": {"train": [s.train_accuracy for s in h], "val": [s.val_accuracy for s in h]},
        }
        self.client.log_figure(self.run_id, curves([s.epoch for s in h], series, title=cfg.run_name()), "curves.png")
        test = result.evaluations["test"]
        fig = confusion_matrix(test.labels, test.predictions, data.classes, title=f"{cfg.run_name()} (test)")
        self.client.log_figure(self.run_id, fig, "confusion_matrix_test.png")
        report = per_class_report(test.labels, test.predictions, data.classes)
        self.client.log_dict(self.run_id, report, "classification_report_test.json")
        self.client.log_dict(self.run_id, {"classes": list(data.classes)}, "classes.json")

    def log_model(self, cfg: TrainConfig, data: DataBundle, result: TrainResult, val_accuracy: float) -> int:
        """Log the kept model (pt2, eval mode, CPU) and its weights, register it and move
        ``champion`` if it is better; returns the registered version."""
        model = result.model.to("cpu").eval()
        weights.log_weights(self.client, self.run_id, cfg, data, model)
        # Two real test images: a batch of one would fix the exported batch size to 1.
        example = data.test.images[:2].float().div(255).numpy()
        info = serving.log_model(
            model,
            name=names.MODEL_ARTIFACT,
            classes=data.classes,
            input_example=example,
            run_id=self.run_id,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            # MLflow would load the saved model back and predict the example to check it; the
            # signature is ours and the tests serve the model, so that second load is not needed.
            validate_serving_input=False,
        )
        return self.register(info.model_uri, cfg.norm, val_accuracy)

    def register(self, model_uri: str, norm: str, val_accuracy: float) -> int:
        """Register the logged model as ``resnorm-{norm}``, tag the version with its validation
        accuracy and move ``champion`` to it if it is the best."""
        name = names.registered_model(norm)
        # A run resumed after a kill that came once it had registered (before it had FINISHED) registers its
        # model again: a run stands for one version, its last.
        for stale in self.client.search_model_versions(f"name = '{name}' and run_id = '{self.run_id}'"):
            withdraw(self.client, name, int(stale.version))
        version = int(mlflow.register_model(model_uri, name).version)
        self.registered = (name, version)  # withdrawn if the run does not finish (training_run)
        self.client.set_model_version_tag(name, str(version), names.final_metric("val", "accuracy"), str(val_accuracy))
        promote_if_better(self.client, name, version, val_accuracy)
        return version

    def withdraw(self) -> None:
        """Delete the version this run registered, if any: a run that ends FAILED or KILLED (or is
        left to a resume) keeps no registered version, and a champion it took goes back to the best
        version left. Best effort: the store may be what failed, and then the line says so."""
        if self.registered is None:
            return
        name, version = self.registered
        try:
            withdraw(self.client, name, version)
            self.registered = None
        except Exception as e:  # noqa: BLE001 - the run's own failure is the error to report
            warn(
                f"version {version} of {name} was registered by run {self.run_id}, which did not finish, and "
                f"could not be deleted ({one_line(e)[:200]}); delete it: the run has no model to stand for"
            )
