"""Training throughput of the plain and the fast path for one configuration: what the ``bench`` entry
point measures for each (it lives beside the other benchmarks, not in the library: it measures the
library). ``benchmarks.benchrun`` runs every configuration, ``feeding`` and ``sharing`` the rest.

``BenchSpec`` is what a bench run measures, with every allowed value and range (as ``TrainConfig``
is for a training): the entry point builds one from its options, ``benchrun.run`` measures it, and the
processes of ``--share`` receive it whole.

A configuration is one (mode, norm, batch size). Each trains a fresh ResNet through the engine's
own step (``resnorm.fast.Runner.step``) on batches from the runner's own feeding over random uint8
images placed as that mode places them, so what is timed is what ``train`` runs.
The first ``warmup`` steps (compiling, cuDNN autotuning) are timed apart from the ``steps`` that
give images per second; the device is synchronised before every clock read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from resnorm import fast
from resnorm.bundle import DataBundle, Split
from resnorm.config import COMPILE_MODES, DEVICES, TrainConfig
from resnorm.engine import prepare
from resnorm.errors import ConfigError
from resnorm.norms import NORM_NAMES

BENCH_MODES = ("plain", "fast")
MAX_IMAGES = 1_000_000  # images one measurement generates (batch size x steps)
MAX_SHARE = 16  # trainings at once on one device


def _listed(name: str, items: Sequence, allowed: str) -> ConfigError:
    return ConfigError(f"{name} {','.join(map(str, items))!r}: give a comma-separated list of {allowed}")


@dataclass(frozen=True)
class BenchSpec:
    """What one bench run measures; every range is checked here, where the spec is built."""

    norms: tuple[str, ...] = NORM_NAMES
    batch_sizes: tuple[int, ...] = (8, 32, 128)
    modes: tuple[str, ...] = BENCH_MODES
    image_size: int = 256
    steps: int = 50  # timed training steps per configuration
    warmup: int = 10  # untimed steps first (compiling, autotuning), reported apart
    classes: int = 25
    n: int = 2
    compile_mode: str = "auto"
    feed_files: int = 512  # JPEG files for the feeding rates; 0 skips them
    share: tuple[int, ...] = ()  # trainings at once on the device, each its own process; () skips
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.norms or any(x not in NORM_NAMES for x in self.norms):
            raise _listed("norms", self.norms, ", ".join(NORM_NAMES))
        if not self.batch_sizes or any(b < 2 for b in self.batch_sizes):
            raise _listed("batch sizes", self.batch_sizes, "batch sizes of at least 2")
        if not self.modes or any(m not in BENCH_MODES for m in self.modes):
            raise _listed("modes", self.modes, ", ".join(BENCH_MODES))
        if any(not 1 <= k <= MAX_SHARE for k in self.share):
            raise _listed("share", self.share, f"process counts from 1 to {MAX_SHARE}, or nothing")
        for field, low in (("image_size", 8), ("steps", 1), ("warmup", 1), ("classes", 2), ("n", 1), ("feed_files", 0)):
            if getattr(self, field) < low:
                raise ConfigError(f"{field} must be at least {low}, got {getattr(self, field)}")
        for field, allowed in (("compile_mode", COMPILE_MODES), ("device", DEVICES)):
            if getattr(self, field) not in allowed:
                raise ConfigError(f"unknown {field} {getattr(self, field)!r}; valid: {', '.join(allowed)}")
        for b in self.batch_sizes:
            if b * (self.warmup + self.steps) > MAX_IMAGES:
                raise ConfigError(
                    f"batch size {b} x {self.warmup + self.steps} steps is too many images for one "
                    f"measurement (at most {MAX_IMAGES:,})"
                )

    def as_params(self) -> dict[str, str]:
        """The MLflow params of the bench run (lists comma-separated)."""
        return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}

    def shared(self) -> dict:
        """The one configuration the processes of ``--share`` train at once: fast torch_bn at batch 32
        where those are measured, else the first of each."""
        return {
            "mode": "fast" if "fast" in self.modes else self.modes[0],
            "norm": "torch_bn" if "torch_bn" in self.norms else self.norms[0],
            "batch_size": 32 if 32 in self.batch_sizes else self.batch_sizes[0],
        }


@dataclass(frozen=True)
class TrainRate:
    mode: str
    norm: str
    batch_size: int
    images_per_second: float
    ms_per_step: float
    warmup_seconds: float  # the warm-up steps, compile included
    compile_seconds: float  # of which compiling (0 when eager)
    peak_memory_mb: float | None  # CUDA only
    speed: str  # what ran, e.g. "fast (bf16 autocast, channels_last, torch.compile(reduce-overhead))"
    fallback: str | None = None  # why compiling failed, if it did
    timed_from: float = 0.0  # wall clock (time.time()) of the timed stretch
    timed_to: float = 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_bundle(images: int, image_size: int, classes: int, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (images,), generator=g)
    split = Split(x, y)
    return DataBundle("random", "random", tuple(f"c{i}" for i in range(classes)), split, split, split)


def train_rate(
    spec: BenchSpec,
    mode: str,
    norm: str,
    batch_size: int,
    device: torch.device,
    barrier: Callable[[], None] | None = None,
) -> TrainRate:
    """Images per second of ``steps`` training steps after ``warmup`` ones, for one configuration.
    ``barrier`` is called between the two (processes sharing a device time the same stretch)."""
    steps, warmup = spec.steps, spec.warmup
    speed = fast.resolve_speed(mode, device, batch_size, spec.compile_mode)
    fast.configure_backends(speed, device)
    torch.compiler.reset()  # every configuration compiles afresh (and none hits the recompile limit)
    cfg = TrainConfig(norm=norm, batch_size=batch_size, image_size=spec.image_size, n=spec.n, augment=True)
    t = prepare(cfg, random_bundle(batch_size * (warmup + steps), spec.image_size, spec.classes), device, speed)
    t.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = t.runner.batches(t.data.train, batch_size, torch.Generator().manual_seed(0), cfg.augment_padding)
    sync(device)
    start = time.perf_counter()
    for i, (x, y) in enumerate(stream):
        if i == warmup:
            sync(device)
            warm = time.perf_counter()
            warmup_seconds = warm - start
            if barrier is not None:
                barrier()
                warm = time.perf_counter()
            began = time.time()
        t.runner.step(t.optimizer, x, y)
    sync(device)
    elapsed = time.perf_counter() - warm
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return TrainRate(
        mode,
        norm,
        batch_size,
        steps * batch_size / elapsed,
        1000 * elapsed / steps,
        warmup_seconds,
        t.runner.compile_seconds,
        peak,
        speed.describe(),
        t.runner.fallback,
        began,
        time.time(),
    )
