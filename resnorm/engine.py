"""Training and evaluation: the loop, the schedule, the best-validation model. No MLflow here.

``train`` reports every epoch to a callback (the tracking side writes it to MLflow) and returns
the model restored to its best-validation epoch, with that model's scores on every split. Given a
snapshot path it saves everything the next epoch depends on after every epoch, and continues from
that file when it exists, so an interrupted run ends exactly as an uninterrupted one. How the
arithmetic runs on the device (plain or fast) is the ``Runner``'s business (``resnorm.fast``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from resnorm import metrics, names, snapshots
from resnorm.bundle import SPLITS, DataBundle, Split
from resnorm.config import TrainConfig
from resnorm.errors import ConfigError, TrainingDiverged
from resnorm.fast import PLAIN, Runner, Speed
from resnorm.model import ResNet
from resnorm.norms import gate_clipper
from resnorm.optim import build_optimizer, build_scheduler

OnEpoch = Callable[["EpochStats"], None]


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float  # the learning rate this epoch trained with
    epoch_seconds: float  # training and validation
    images_per_second: float  # training images per second of training
    timestamp_ms: int = 0  # wall clock at the epoch's end; a re-sent epoch keeps its timestamp


@dataclass
class Evaluation:
    loss: float
    labels: np.ndarray  # (N,) true classes
    predictions: np.ndarray  # (N,) predicted classes

    def scores(self) -> dict[str, float]:
        return metrics.scores(self.labels, self.predictions)


@dataclass
class TrainResult:
    model: ResNet  # restored to the best-validation epoch, in eval mode
    best_epoch: int
    history: list[EpochStats]
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # split -> eval of the best model
    speed: Speed = PLAIN
    compile_seconds: float = 0.0  # spent compiling in the first train and eval calls (fast path)
    compile_fallback: str | None = None  # why torch.compile failed, when it did (training went on eagerly)
    overhead_seconds: float = 0.0  # the loop's time outside training and evaluation: snapshots, tracking

    def final_metrics(self) -> dict[str, float]:
        """``best_epoch`` and ``best_{split}_{accuracy,micro_f1,macro_f1}`` of the kept model."""
        out: dict[str, float] = {names.BEST_EPOCH: float(self.best_epoch)}
        for split, ev in self.evaluations.items():
            out.update({names.final_metric(split, k): v for k, v in ev.scores().items()})
        return out

    def timings(self) -> dict[str, float]:
        """Where time went besides training: ``overhead_seconds`` (snapshots, tracking) and, for a
        compiled model, ``compile_seconds``."""
        out = {names.OVERHEAD_SECONDS: self.overhead_seconds}
        if self.speed.compile_mode:
            out[names.COMPILE_SECONDS] = self.compile_seconds
        return out


def build_model(cfg: TrainConfig, data: DataBundle) -> ResNet:
    mean, std = data.mean_std()
    return ResNet(cfg.n, data.num_classes, cfg.norm_layer(), data.channels, mean, std)


@dataclass
class Training:
    """Everything one run trains with, and its progress so far (what a snapshot holds)."""

    cfg: TrainConfig
    data: DataBundle  # placed where the runner reads it
    runner: Runner
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # shuffling and augmentation draws
    where: str = "host"  # where the images are
    history: list[EpochStats] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    overhead: float = 0.0  # seconds the loop spent on snapshots and handing epochs to tracking

    @property
    def model(self) -> ResNet:
        return self.runner.model

    def state(self) -> dict:
        """What the next epoch depends on, for ``snapshots.save``."""
        return {
            "config": self.cfg.as_params(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [dataclasses.asdict(h) for h in self.history],
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def restore(self, state: dict, where: Path) -> None:
        if state["config"] != self.cfg.as_params():
            raise ConfigError(f"the snapshot {where} is of another configuration ({state['config']}); not resuming it")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [EpochStats(**h) for h in state["history"]]
        self.best_acc, self.best_epoch, self.best_state = state["best_acc"], state["best_epoch"], state["best_state"]


def prepare(cfg: TrainConfig, data: DataBundle, device: torch.device, speed: Speed = PLAIN) -> Training:
    """The model (seeded), its runner, optimizer and schedule, and the data placed for ``speed``."""
    if cfg.batch_size > len(data.train):
        raise ConfigError(
            f"batch_size {cfg.batch_size} exceeds the {len(data.train)} training images; use a smaller one"
        )
    torch.manual_seed(cfg.seed)
    runner = Runner(build_model(cfg, data), device, speed)
    optimizer = build_optimizer(cfg, runner.model, fused=runner.fused_optimizer())
    placed, where = runner.place(data)
    return Training(
        cfg, placed, runner, optimizer, build_scheduler(cfg, optimizer), torch.Generator().manual_seed(cfg.seed), where
    )


@torch.no_grad()
def evaluate(runner: Runner, split: Split, batch_size: int) -> Evaluation:
    """Loss and predictions over a whole split in eval mode, without augmentation. Everything stays
    on the device until one copy at the end."""
    runner.model.eval()
    loss = torch.zeros((), device=runner.device, dtype=torch.float64)
    preds = []
    for x, y, real in runner.eval_batches(split, batch_size):
        logits = runner.forward(x)[:real].float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.int64)
    return Evaluation(loss.item() / max(1, len(split)), split.labels.cpu().numpy(), predictions)


def train_one_epoch(t: Training, progress: bool = False) -> tuple[float, float, int]:
    """One pass over the shuffled, augmented training split: (mean loss, accuracy, images).
    Nothing here waits for the device: loss and accuracy are summed where they are computed."""
    t.model.train()
    clip_gates = gate_clipper(t.model)
    device = t.runner.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    stream = t.runner.batches(t.data.train, t.cfg.batch_size, t.generator, t.cfg.augment_padding)
    for x, y in tqdm(
        stream, total=len(t.data.train) // t.cfg.batch_size, unit="step", leave=False, disable=not progress
    ):
        logits, loss = t.runner.step(t.optimizer, x, y)
        clip_gates()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen, seen


def run_epoch(t: Training, epoch: int, progress: bool = False) -> EpochStats:
    """Train one epoch, step the schedule, validate; keep the model if it is the best so far."""
    start = time.perf_counter()
    lr = t.optimizer.param_groups[0]["lr"]
    train_loss, train_acc, seen = train_one_epoch(t, progress)
    train_seconds = time.perf_counter() - start
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"the training loss became {train_loss} in epoch {epoch} "
            f"(lr={t.cfg.lr:g}, norm={t.cfg.norm}); lower the learning rate"
        )
    t.scheduler.step()
    val = evaluate(t.runner, t.data.val, t.cfg.batch_size)
    val_scores = val.scores()
    stats = EpochStats(
        epoch,
        train_loss,
        train_acc,
        val.loss,
        val_scores["accuracy"],
        val_scores["macro_f1"],
        lr,
        time.perf_counter() - start,
        seen / train_seconds,
        int(time.time() * 1000),
    )
    t.history.append(stats)
    if stats.val_accuracy > t.best_acc:
        t.best_acc, t.best_epoch = stats.val_accuracy, epoch
        t.best_state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return stats


def finish(t: Training) -> TrainResult:
    """The best-validation model, scored on every split, back as an ordinary float32 NCHW module."""
    if t.best_state is None:
        raise RuntimeError("no epoch was trained, so there is no best-validation model")  # epochs >= 1: never
    t.model.load_state_dict(t.best_state)
    evaluations = {s: evaluate(t.runner, t.data.split(s), t.cfg.batch_size) for s in SPLITS}
    model = t.model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model,
        t.best_epoch,
        t.history,
        evaluations,
        t.runner.speed,
        t.runner.compile_seconds,
        t.runner.fallback,
        t.overhead,
    )


def train(
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device,
    speed: Speed = PLAIN,
    on_epoch: OnEpoch | None = None,
    progress: bool | None = None,
    snapshot_path: Path | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``data``; keep and return the epoch with the best validation accuracy.

    ``progress``: True for a tqdm bar, False for silence, None for a bar on a terminal and one
    line per epoch otherwise. ``snapshot_path``: saved after every epoch; when the file exists,
    training continues from it (its epochs are reported to ``on_epoch`` again first: a crash between
    the snapshot and the report must not lose one, and MLflow drops an identical re-sent point).
    """
    t = prepare(cfg, data, device, speed)
    if speed.fast:
        print(f"{speed.describe()}; images in {t.where}", flush=True)
    if snapshot_path is not None and snapshot_path.exists():
        t.restore(snapshots.load(snapshot_path), snapshot_path)
    if on_epoch is not None:
        for stats in t.history:
            on_epoch(stats)
    # tqdm's disable=None turns the bar off when not writing to a terminal; one line per epoch then.
    bar = tqdm(
        range(len(t.history) + 1, cfg.epochs + 1),
        desc=cfg.run_name(),
        unit="epoch",
        disable=None if progress is None else not progress,
    )
    for epoch in bar:
        stats = run_epoch(t, epoch, not bar.disable)
        aside = time.perf_counter()
        if snapshot_path is not None:  # before the report: once an epoch is reported, it must be resumable
            snapshots.save(t.state(), snapshot_path)
        if on_epoch is not None:
            on_epoch(stats)
        t.overhead += time.perf_counter() - aside
        bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_accuracy:.3f}", best=t.best_epoch)
        if progress is None and bar.disable:
            print(epoch_line(stats, cfg.epochs), flush=True)
    bar.close()
    return finish(t)


def epoch_line(s: EpochStats, epochs: int) -> str:
    return (
        f"epoch {s.epoch}/{epochs} train_loss {s.train_loss:.4f} train_acc {s.train_accuracy:.4f} "
        f"val_loss {s.val_loss:.4f} val_acc {s.val_accuracy:.4f} ({s.epoch_seconds:.1f}s)"
    )
