"""What a run trains (``TrainConfig``) and how it is launched (``Launch``): frozen dataclasses that
own their allowed values and ranges and are validated where they are built.

The command line checks only types; every range lives here, so a sweep that plans a configuration
has already checked what its child will check.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from resnorm import machine, names, optim
from resnorm.errors import ConfigError
from resnorm.model import STAGE_CHANNELS, depth
from resnorm.norms import DEFAULT_GROUPS, NORM_NAMES, NORM_SETTINGS, NormLayer, check_groups, get_norm, norm_options

OPTIMIZERS = tuple(optim.OPTIMIZERS)  # sgd, adam
SCHEDULERS = tuple(optim.SCHEDULERS)  # cosine, step, none
DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "plain", "fast")  # see resnorm.fast
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "none")
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
MIN_IMAGE_SIZE = 8  # two stride-2 stages and a crop padding of image_size // 8 need at least this


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {field} {value!r}; valid: {', '.join(allowed)}")


def _at_least(field: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{field} must be at least {low}, got {value}")


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
    momentum: float = 0.9  # SGD momentum in [0, 1]; Adam ignores it
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
        _choice("norm", self.norm, NORM_NAMES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        for field in ("epochs", "batch_size", "n", "groups"):
            _at_least(field, getattr(self, field), 1)
        _at_least("image_size", self.image_size, MIN_IMAGE_SIZE)
        for field in ("lr", "weight_decay", "momentum"):
            value = getattr(self, field)
            if not value >= 0 or value == float("inf"):  # also rejects nan
                raise ConfigError(f"{field} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ConfigError("lr must be greater than 0, got 0")
        if self.momentum > 1:
            raise ConfigError(f"momentum must be at most 1, got {self.momentum}")
        if "groups" in NORM_SETTINGS.get(self.norm, ()):
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
        return depth(self.n)

    @property
    def augment_padding(self) -> int:
        return self.image_size // 8 if self.augment else 0

    def norm_layer(self) -> NormLayer:
        """The norm's constructor, ``channels -> nn.Module``, with the options of this run it takes."""
        return get_norm(self.norm, **norm_options(self.norm, groups=self.groups))

    def run_name(self) -> str:
        """``{norm}-{optimizer}-lr{lr}-{aug|noaug}-bs{batch_size}``, e.g. ``ln-sgd-lr0.1-aug-bs32``."""
        aug = "aug" if self.augment else "noaug"
        return f"{self.norm}-{self.optimizer}-lr{self.lr:g}-{aug}-bs{self.batch_size}"

    def as_params(self) -> dict[str, str]:
        """Every field (and the derived depth) as MLflow param strings."""
        params = dataclasses.asdict(self)
        params["depth"] = self.depth
        # Booleans spelled as MLproject passes them, so runs started either way agree.
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}

    @classmethod
    def from_record(cls, fields: Mapping[str, Any]) -> TrainConfig:
        """The configuration a JSON record holds (a sweep's ``sweep.json``): every field, each of its
        type (an int field takes no 2.5 and no true; a float field takes an int), nothing else."""
        if not isinstance(fields, Mapping):
            raise ConfigError(f"a configuration is a mapping of its fields, not {type(fields).__name__}")
        missing, unknown = [f for f in FIELD_TYPES if f not in fields], sorted(set(fields) - set(FIELD_TYPES))
        if missing or unknown:
            raise ConfigError(
                "a configuration needs exactly TrainConfig's fields"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(map(str, unknown))}" if unknown else "")
            )
        for field, kind in FIELD_TYPES.items():
            value = fields[field]
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
            }[kind]
            if not ok:
                raise ConfigError(f"{field}={value!r} is not {'an' if kind == 'int' else 'a'} {kind}")
        typed: dict[str, Any] = {k: float(v) if FIELD_TYPES[k] == "float" else v for k, v in fields.items()}
        return cls(**typed)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TrainConfig:
        """The configuration a run's logged params describe (other params, such as depth, are ignored)."""
        typed: dict[str, Any] = {k: parse_value(k, v) for k, v in params.items() if k in FIELD_TYPES}
        return cls(**typed)


FIELD_TYPES: dict[str, str] = {
    f.name: str(f.type) for f in dataclasses.fields(TrainConfig)
}  # names: postponed annotations
_PARSE = {"int": int, "float": float, "str": str}


def parse_value(field: str, text: str) -> Any:
    """``text`` as the type of TrainConfig's ``field`` ("batch_size", "8" -> 8)."""
    if field not in FIELD_TYPES:
        raise ConfigError(f"unknown parameter {field!r}; valid: {', '.join(FIELD_TYPES)}")
    kind = FIELD_TYPES[field]
    text = text.strip()
    if kind == "bool":
        if text.lower() not in BOOL_WORDS:
            raise ConfigError(f"{field}={text!r} is not a boolean; use true or false")
        return BOOL_WORDS[text.lower()]
    try:
        return _PARSE[kind](text)
    except ValueError:
        raise ConfigError(f"{field}={text!r} is not a valid {kind}") from None


@dataclass(frozen=True)
class Launch:
    """How and where a run is launched; none of it changes what is trained, only where and how fast
    (``threads`` and ``mode`` change the arithmetic's rounding, so they are logged too)."""

    device: str = "auto"  # auto (CUDA when present), cpu, cuda
    mode: str = "auto"  # auto (fast on CUDA, plain elsewhere), plain, fast
    compile_mode: str = "auto"  # the fast path's torch.compile mode; none: eager
    resume: str = ""  # run id of an interrupted run to continue
    threads: int = 0  # torch's intra-op threads; 0: every core this process may use

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("mode", self.mode, MODES)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _at_least("threads", self.threads, 0)

    def as_params(self) -> dict[str, str]:
        """The launch settings a training run logs, as asked (tags and ``torch_threads`` say what ran)."""
        return {"device": self.device, "mode": self.mode, names.PARAM_THREADS: str(self.threads)}

    def torch_threads(self) -> int:
        """The intra-op thread count this launch asks for, resolved."""
        return self.threads or machine.available_cpus()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA is an error, not a fallback."""
    _choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


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
        available = machine.available_memory()
        if available is not None and need > 0.8 * available:
            raise ConfigError(
                f"n={cfg.n} makes a ResNet-{cfg.depth} of {cfg.parameters:.3g} weights, whose weights, gradients and "
                f"optimiser state need {need / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB of memory is "
                f"available; lower n"
            )
