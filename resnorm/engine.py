"""Training and evaluation: the loop, the schedule, the best-validation model. No MLflow here.

``train`` reports every epoch to a callback (the tracking side writes it to MLflow) and returns
the model restored to its best-validation epoch, with that model's scores on every split. Given a
checkpoint path it saves everything the next epoch depends on after every epoch, and continues
from that file when it exists, so an interrupted run ends exactly as an uninterrupted one.
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
from torch import nn
from tqdm.auto import tqdm

from resnorm import fast, metrics, names, snapshots
from resnorm.config import TrainConfig
from resnorm.data import SPLITS, DataBundle, Split, batches
from resnorm.errors import ConfigError, TrainingDiverged
from resnorm.fast import CompiledModel, Speed
from resnorm.model import ResNet, resnet
from resnorm.norms import gate_clipper


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
    speed: Speed = Speed("plain")
    compile_seconds: float = 0.0  # spent compiling in the first train and eval calls (fast path)
    compile_fallback: str | None = None  # why torch.compile failed, when it did (training went on eagerly)
    overhead_seconds: float = 0.0  # the loop's time outside training and evaluation: checkpoints, tracking

    def final_metrics(self) -> dict[str, float]:
        """``best_epoch`` and ``best_{split}_{accuracy,micro_f1,macro_f1}`` of the kept model."""
        out: dict[str, float] = {names.BEST_EPOCH: float(self.best_epoch)}
        for split, ev in self.evaluations.items():
            out.update({names.final_metric(split, k): v for k, v in ev.scores().items()})
        return out

    def timings(self) -> dict[str, float]:
        """Where time went besides training: ``overhead_seconds`` (checkpoints, tracking) and,
        for a compiled model, ``compile_seconds``."""
        out = {names.OVERHEAD_SECONDS: self.overhead_seconds}
        if self.speed.compile_mode:
            out[names.COMPILE_SECONDS] = self.compile_seconds
        return out


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def build_model(cfg: TrainConfig, data: DataBundle) -> ResNet:
    mean, std = data.mean_std()
    return resnet(cfg.n, data.num_classes, cfg.norm, data.channels, cfg.groups, mean, std)


def build_optimizer(cfg: TrainConfig, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    # Weight decay by tensor rank, so it works for every norm: conv and linear weights decay;
    # biases, norm affines and Batch-Instance gates (which Nam & Kim exempt) do not.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for every parameter's update (CUDA); otherwise torch's default (foreach).
    kind = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kind)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **kind)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: sgd, adam")


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; valid: cosine, step, none")


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, device: torch.device, speed: Speed = Speed("plain"), forward=None
) -> Evaluation:
    """Loss and predictions over a whole split in eval mode, without augmentation.

    Everything stays on the device until the end. The fast path evaluates in batches of one size
    (``speed.eval_batch``, the last one padded) so a compiled model sees a single shape.
    """
    model.eval()
    forward = forward or model
    size = speed.eval_batch or batch_size
    loss = torch.zeros((), device=device, dtype=torch.float64)
    preds = []
    fmt = speed.memory_format
    for x, y in batches(split, size, device, memory_format=fmt):
        real = len(y)
        if speed.eval_batch and real < size:
            x = torch.cat([x, x.new_zeros((size - real, *x.shape[1:]))]).contiguous(memory_format=fmt)
        with fast.autocast(speed, device):
            logits = forward(x)[:real].float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.int64)
    return Evaluation(loss.item() / max(1, len(split)), split.labels.cpu().numpy(), predictions)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    cfg: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = False,
    speed: Speed = Speed("plain"),
    forward: CompiledModel | None = None,
) -> tuple[float, float, int]:
    """One pass over the shuffled, augmented training split: (mean loss, accuracy, images).

    Nothing here waits for the device: loss and accuracy are summed where they are computed.
    """
    model.train()
    forward = forward or CompiledModel(model, None)
    clip_gates = gate_clipper(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    steps = len(split) // cfg.batch_size
    stream = batches(split, cfg.batch_size, device, generator, cfg.augment_padding, memory_format=speed.memory_format)
    for x, y in tqdm(stream, total=steps, unit="step", leave=False, disable=not progress):
        logits, loss = train_step(model, forward, optimizer, x, y, speed, device)
        clip_gates()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen, seen


def train_step(model, forward: CompiledModel, optimizer, x, y, speed: Speed, device):
    """Forward, backward and update of one batch; the first compiled backward falls back to
    eager like the forward does, redoing the batch."""
    optimizer.zero_grad(set_to_none=True)
    with fast.autocast(speed, device):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    if forward.compiled and not forward.backward_checked:
        start = time.perf_counter()
        try:
            loss.backward()
        except Exception as e:  # noqa: BLE001 - the backward graph compiles on its first call
            forward.fail(e)
            optimizer.zero_grad(set_to_none=True)
            with fast.autocast(speed, device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
        forward.backward_checked = True
        forward.compile_seconds += time.perf_counter() - start
    else:
        loss.backward()
    optimizer.step()
    return logits, loss


def prepare(
    cfg: TrainConfig, data: DataBundle, device: torch.device, speed: Speed
) -> tuple[ResNet, torch.optim.Optimizer, DataBundle, CompiledModel, str]:
    """What one run trains with on ``device``: the model (channels_last on the fast path), its
    optimizer (fused on CUDA's fast path), the data placed as the path reads it, the forward
    (compiled where the path compiles) and where the images are."""
    model = build_model(cfg, data).to(device)
    optimizer = build_optimizer(cfg, model, fused=speed.fast and device.type == "cuda")
    where = "host"
    if speed.fast:
        model = model.to(memory_format=speed.memory_format)
        data, where = fast.place_images(data, device)
    return model, optimizer, data, CompiledModel(model, speed.compile_mode), where


def train(
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
    checkpoint_path: Path | None = None,
    mode: str = "auto",
    compile_mode: str = "auto",
) -> TrainResult:
    """Train ``cfg`` on ``data``; keep and return the epoch with the best validation accuracy.

    ``progress``: True for a tqdm bar, False for silence, None for a bar on a terminal and one
    line per epoch otherwise. ``checkpoint_path``: saved after every epoch; when the file exists,
    training continues from it (its epochs are reported to ``on_epoch`` again first).
    ``mode``: ``plain``, ``fast`` or ``auto`` (fast on CUDA), see ``resnorm.fast``.
    """
    device = device or resolve_device("auto")
    speed = fast.resolve_speed(mode, device, cfg.batch_size, compile_mode)
    fast.configure_backends(speed, device)
    if cfg.batch_size > len(data.train):
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(data.train)} training images; use a smaller one")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation draws
    model, optimizer, data, forward, where = prepare(cfg, data, device, speed)
    scheduler = build_scheduler(cfg, optimizer)
    if speed.fast:
        print(f"{speed.describe()}; images in {where}", flush=True)

    history: list[EpochStats] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    overhead = 0.0  # seconds the loop spent checkpointing and handing epochs to tracking
    if checkpoint_path is not None and checkpoint_path.exists():
        state = snapshots.load(checkpoint_path)
        if state["config"] != cfg.as_params():
            raise ConfigError(f"the checkpoint {checkpoint_path} is of another configuration ({state['config']}); not resuming it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochStats(**h) for h in state["history"]]
        best_acc, best_epoch, best_state = state["best_acc"], state["best_epoch"], state["best_state"]
        # Report the restored epochs again: a crash between the checkpoint and the report must
        # not lose one, and an identical re-sent point (same timestamp) is dropped by MLflow.
        for stats in history:
            if on_epoch is not None:
                on_epoch(stats)
    # tqdm's disable=None turns the bar off when not writing to a terminal; one line per epoch then.
    bar = tqdm(range(len(history) + 1, cfg.epochs + 1), desc=cfg.run_name(), unit="epoch",
               disable=None if progress is None else not progress)
    epoch_lines = progress is None and bar.disable
    for epoch in bar:
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc, seen = train_one_epoch(
            model, optimizer, data.train, cfg, generator, device, not bar.disable, speed, forward
        )
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"the training loss became {train_loss} in epoch {epoch} (lr={cfg.lr:g}, norm={cfg.norm}); "
                "lower the learning rate"
            )
        scheduler.step()
        val = evaluate(model, data.val, cfg.batch_size, device, speed, forward)
        val_scores = val.scores()
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val.loss,
            val_accuracy=val_scores["accuracy"],
            val_macro_f1=val_scores["macro_f1"],
            lr=lr,
            epoch_seconds=time.perf_counter() - start,
            images_per_second=seen / train_seconds,
            timestamp_ms=int(time.time() * 1000),
        )
        history.append(stats)
        if stats.val_accuracy > best_acc:
            best_acc, best_epoch = stats.val_accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        aside = time.perf_counter()
        if checkpoint_path is not None:
            # Before the report: once the epoch is reported, it must be resumable.
            snapshots.save(
                {
                    "config": cfg.as_params(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": [dataclasses.asdict(h) for h in history],
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                },
                checkpoint_path,
            )
        if on_epoch is not None:
            on_epoch(stats)
        overhead += time.perf_counter() - aside
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{stats.val_accuracy:.3f}", best=best_epoch)
        if epoch_lines:
            print(
                f"epoch {epoch}/{cfg.epochs} train_loss {train_loss:.4f} train_acc {train_acc:.4f} "
                f"val_loss {val.loss:.4f} val_acc {stats.val_accuracy:.4f} ({stats.epoch_seconds:.1f}s)",
                flush=True,
            )
    bar.close()

    assert best_state is not None  # epochs >= 1 is validated by TrainConfig
    model.load_state_dict(best_state)
    model.eval()
    evaluations = {s: evaluate(model, data.split(s), cfg.batch_size, device, speed, forward) for s in SPLITS}
    model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, best_epoch, history, evaluations, speed, forward.compile_seconds, forward.fallback,
                       overhead)
