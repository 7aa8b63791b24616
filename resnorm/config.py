"""The training configuration: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from resnorm.errors import ConfigError
from resnorm.model import STAGE_CHANNELS
from resnorm.norms import DEFAULT_GROUPS, NORM_NAMES, check_groups

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("cosine", "step", "none")
DEVICES = ("auto", "cpu", "cuda")

# Bounds of values that pass the checks above and then fail deep inside torch or MLflow.
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes
FLOAT32_MAX = 3.4028234663852886e38  # torch's optimisers hold lr and weight decay as float32
INT_MAX = 2**31 - 1  # epochs, batch size, image size, groups: far beyond any real run, within every counter
BYTES_PER_PARAMETER = 16  # float32 weights, gradients and up to two optimiser moments


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
        check_limits(self)
        if self.data not in ("digits", "synthetic"):  # a folder: absolute before it is logged or compared
            object.__setattr__(self, "data", os.path.abspath(os.path.expanduser(self.data)))

    @property
    def parameters(self) -> int:
        """About how many weights the ResNet has (two 3x3 convolutions per block and stage)."""
        return 18 * self.n * sum(c * c for c in STAGE_CHANNELS)

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


def check_limits(cfg: TrainConfig) -> None:
    """Refuse values that are in range for click but would fail deep inside torch or MLflow."""
    low, high = SEED_RANGE
    if not low <= cfg.seed <= high:
        raise ConfigError(f"seed {cfg.seed} is out of range; torch takes seeds from {low} to {high}")
    for field in ("lr", "weight_decay"):
        if getattr(cfg, field) > FLOAT32_MAX:
            raise ConfigError(f"{field} {getattr(cfg, field):g} does not fit in float32 (at most {FLOAT32_MAX:.7g})")
    for field in ("epochs", "batch_size", "image_size", "groups"):
        if getattr(cfg, field) > INT_MAX:
            raise ConfigError(f"{field} {getattr(cfg, field)} is too large; at most {INT_MAX}")
    need = cfg.parameters * BYTES_PER_PARAMETER
    if need > 2**30:  # only then is it worth reading the machine's memory
        from resnorm.data import available_memory

        available = available_memory()
        if available is not None and need > 0.8 * available:
            raise ConfigError(
                f"n={cfg.n} makes a ResNet-{cfg.depth} of {cfg.parameters:.3g} weights, whose weights, gradients and "
                f"optimiser state need {need / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB of memory is "
                f"available; lower n"
            )
