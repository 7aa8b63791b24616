"""The optimisers and learning-rate schedules a run can name, each built from its settings:
one ``{name: builder}`` table each, whose names are the values ``TrainConfig`` allows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from resnorm.errors import ConfigError


class Settings(Protocol):
    """What the builders read of a run's settings (``TrainConfig`` has it; the config imports this module)."""

    @property
    def optimizer(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def scheduler(self) -> str: ...
    @property
    def epochs(self) -> int: ...


def build_optimizer(cfg: Settings, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    # Weight decay by tensor rank, so it works for every norm: conv and linear weights decay;
    # biases, norm affines and Batch-Instance gates (which Nam & Kim exempt) do not.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for every parameter's update (CUDA); otherwise torch's default (foreach).
    kind = {"fused": True} if fused else {}
    return _builder(OPTIMIZERS, "optimizer", cfg.optimizer)(groups, cfg, kind)


def build_scheduler(cfg: Settings, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    return _builder(SCHEDULERS, "scheduler", cfg.scheduler)(optimizer, cfg)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, cfg, kind: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kind),
    "adam": lambda groups, cfg, kind: torch.optim.Adam(groups, lr=cfg.lr, **kind),
}
SCHEDULERS: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": lambda opt, cfg: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs),  # to 0
    "step": lambda opt, cfg: torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1),
    "none": lambda opt, cfg: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
}


def _builder(table: dict, what: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(table)}") from None
