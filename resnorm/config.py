"""The training configuration: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from resnorm.errors import ConfigError
from resnorm.model import STAGE_CHANNELS
from resnorm.norms import DEFAULT_GROUPS, NORM_NAMES, check_groups

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("cosine", "step", "none")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run; each field is logged as an MLflow param."""

    norm: str = "torch_bn"  # a name in resnorm.norms.NORMS
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.1  # peak learning rate
    weight_decay: float = 1e-4  # L2 on conv and linear weights only (tensors of rank >= 2)
    momentum: float = 0.9  # SGD momentum; Adam ignores it
    scheduler: str = "cosine"  # per-epoch schedule: cosine to 0, step (x0.1 every third), none
    epochs: int = 50
    batch_size: int = 32
    augment: bool = True  # random crop (padding image_size/8) + horizontal flip on train
    n: int = 2  # blocks per stage; depth 6n+2
    image_size: int = 32  # images are resized to image_size x image_size pixels
    groups: int = DEFAULT_GROUPS  # channel groups of "gn"; must divide 16, 32 and 64
    seed: int = 0
    data: str = "digits"  # "digits", "synthetic" or an image folder

    def __post_init__(self) -> None:
        def choice(field: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, field)
            if value not in allowed:
                raise ConfigError(f"unknown {field} {value!r}; valid: {', '.join(allowed)}")

        choice("norm", NORM_NAMES)
        choice("optimizer", OPTIMIZERS)
        choice("scheduler", SCHEDULERS)
        for field in ("epochs", "batch_size", "n"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {self.image_size}")
        for field in ("lr", "weight_decay", "momentum"):
            value = getattr(self, field)
            if not value >= 0 or value == float("inf"):  # also rejects nan
                raise ConfigError(f"{field} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ConfigError("lr must be greater than 0, got 0")
        if self.norm == "gn":
            try:
                check_groups(self.groups, STAGE_CHANNELS)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    @property
    def depth(self) -> int:
        return 6 * self.n + 2

    @property
    def augment_padding(self) -> int:
        return self.image_size // 8 if self.augment else 0

    def run_name(self) -> str:
        aug = "aug" if self.augment else "noaug"
        return f"{self.norm}-{self.optimizer}-lr{self.lr:g}-{aug}-bs{self.batch_size}"

    def as_params(self) -> dict[str, str]:
        """Every field (and the derived depth) as MLflow param strings."""
        params = dataclasses.asdict(self)
        params["depth"] = self.depth
        # Booleans spelled as MLproject passes them, so runs started either way agree.
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
