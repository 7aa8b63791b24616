"""How a run computes on its device: the plain path and the fast path, in one place.

``plain`` is the study as it was run: float32, NCHW, eager. ``fast`` (the default on CUDA) keeps
the decoded uint8 images on the device, trains under bf16 autocast in channels_last, compiles
the model with ``torch.compile`` (CUDA graphs through ``reduce-overhead`` where batches are small
enough to be launch-bound) and steps a fused optimizer. The CPU keeps the plain, exact path
unless ``fast`` is asked for, which the tests do to check that both paths learn the same.

``resolve_speed`` turns the ``mode`` a run was launched with into a ``Speed`` once; a ``Runner``
then owns everything that differs between the paths for one model: its placement, its images,
its batches, its forward (compiled, with the fallback to eager) and its training step. The engine
only calls the runner.

Measured (2026-11-30): nothing of this path has been measured on a GPU yet. The choices above
(bf16 + channels_last, reduce-overhead up to batch 64, images held on the device) follow the
reference figures in ../shared/gpu/README.md (an H200, ResNet-14 at 256 px: plain fp32 eager 785
img/s, bf16 + channels_last 2,772, torch.compile 4,492 at batch 32; batch 8 with CUDA graphs 3,018
against 1,305 eager), which were taken outside this repository. The check that would measure this
code is ``bash benchmarks/gpu_check.sh`` (``bench`` over every norm at batch 8/32/128 and 256 px,
its output to go to ``benchmarks/results/``); no session has had a GPU to run it. On the CPU,
``python entrypoints/bench.py --device cpu`` measures both paths side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnorm import home
from resnorm.bundle import SPLITS, DataBundle, Split
from resnorm.config import MODES
from resnorm.data import batches
from resnorm.errors import ConfigError, one_line, warn

# Batches up to this size are launch-bound on a big GPU: replay them as CUDA graphs.
CUDA_GRAPH_MAX_BATCH = 64
# Evaluation batches of the fast path: one shape for every split (the last batch is padded).
EVAL_BATCH = 256
# What training needs beside the image cache on the GPU (activations, weights, compile workspace).
TRAINING_RESERVE_BYTES = 6 << 30


@dataclass(frozen=True)
class Speed:
    """How one run trains on its device."""

    mode: str  # "plain" or "fast"
    autocast: torch.dtype | None = None  # bf16 under fast
    channels_last: bool = False
    compile_mode: str | None = None  # None: eager; else a torch.compile mode
    eval_batch: int | None = None  # None: the training batch size

    @property
    def fast(self) -> bool:
        return self.mode == "fast"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        if not self.fast:
            return "plain (float32, NCHW, eager)"
        parts = [
            "bf16 autocast" if self.autocast else "float32",
            "channels_last" if self.channels_last else "NCHW",
            f"torch.compile({self.compile_mode})" if self.compile_mode else "eager",
        ]
        return "fast (" + ", ".join(parts) + ")"


PLAIN = Speed("plain")


def resolve_speed(mode: str, device: torch.device, batch_size: int, compile_mode: str = "auto") -> Speed:
    """``auto`` is ``fast`` on CUDA and ``plain`` elsewhere; ``compile_mode`` overrides the choice
    of torch.compile mode (``auto``: CUDA graphs for small batches on CUDA, ``none``: eager)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "auto":
        mode = "fast" if device.type == "cuda" else "plain"
    if mode == "plain":
        return PLAIN
    if compile_mode == "auto":
        graphs = device.type == "cuda" and batch_size <= CUDA_GRAPH_MAX_BATCH
        compile_mode = "reduce-overhead" if graphs else "default"
    return Speed(
        "fast",
        autocast=torch.bfloat16,
        channels_last=True,
        compile_mode=None if compile_mode == "none" else compile_mode,
        eval_batch=EVAL_BATCH,
    )


def configure_backends(speed: Speed, device: torch.device) -> None:
    """Process-wide settings of the fast path: cuDNN autotuning for fixed shapes, a compile cache
    that outlives /tmp, so the runs of a sweep compile once. Call it before the first compile:
    torch fixes its cache folder then."""
    if not speed.fast:
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # torch fills the variable with its /tmp default as soon as something imports its compiler
    # (torchvision does); a folder the user chose is kept.
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default = os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):
        default = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(home.compile_cache_dir())


def place_images(data: DataBundle, device: torch.device) -> tuple[DataBundle, str]:
    """The uint8 images where the fast path reads them: on the GPU when they fit beside training,
    else where they are, in host memory (``batches`` stages each gathered batch through pinned
    memory for an asynchronous copy). Returns (data, where)."""
    if device.type != "cuda":
        return data, "host"
    need = sum(data.split(s).images.numel() for s in SPLITS)
    free, _ = torch.cuda.mem_get_info(device)
    if need + TRAINING_RESERVE_BYTES <= free:
        train, val, test = (Split(data.split(s).images.to(device), data.split(s).labels.to(device)) for s in SPLITS)
        return dataclasses.replace(data, train=train, val=val, test=test), "gpu"
    return data, "host memory (batches staged through pinned memory)"


class Runner:
    """One model on its device, computed as ``speed`` says: the only place that knows the paths apart.

    It moves the model (channels_last on the fast path), compiles its forward with static shapes
    (one graph for the training batch, one for the evaluation batch, each under reduce-overhead
    recorded as a CUDA graph) and, when compiling the forward or the lazily compiled backward
    fails, says so on one line and goes on eagerly. ``compile_seconds`` is the time the first
    compiled calls took; ``fallback`` why compiling failed.
    """

    def __init__(self, model: nn.Module, device: torch.device, speed: Speed = PLAIN) -> None:
        configure_backends(speed, device)
        # torch's stubs leave memory_format out of Module.to, which takes it
        self.model = model.to(device, memory_format=speed.memory_format)  # type: ignore[call-overload]
        self.device, self.speed = device, speed
        compile_mode = speed.compile_mode
        self.fn = torch.compile(self.model, mode=compile_mode, dynamic=False) if compile_mode else self.model
        self.fallback: str | None = None
        self.compile_seconds = 0.0
        self._first = {True: compile_mode is not None, False: compile_mode is not None}  # per train/eval mode
        self._backward_checked = compile_mode is None

    @property
    def compiled(self) -> bool:
        return self.speed.compile_mode is not None and self.fallback is None

    def fused_optimizer(self) -> bool:
        """One kernel for every parameter's update: the fast path on CUDA."""
        return self.speed.fast and self.device.type == "cuda"

    def place(self, data: DataBundle) -> tuple[DataBundle, str]:
        """The data as this path reads it, and where its images are."""
        return place_images(data, self.device) if self.speed.fast else (data, "host")

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None = None, padding: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(split, batch_size, self.device, generator, padding, self.speed.memory_format)

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(images, labels, real) over a split in order; the fast path pads every batch to one size."""
        size = self.speed.eval_batch or batch_size
        for x, y in self.batches(split, size):
            real = len(y)
            if self.speed.eval_batch and real < size:
                pad = x.new_zeros((size - real, *x.shape[1:]))
                x = torch.cat([x, pad]).contiguous(memory_format=self.speed.memory_format)
            yield x, y, real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.speed.autocast, enabled=self.speed.autocast is not None):
            return self._call(x)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled and self.speed.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        if not (self._first[self.model.training] and self.compiled):
            return self.fn(x)
        self._first[self.model.training] = False
        start = time.perf_counter()
        try:
            out = self.fn(x)
        except Exception as e:  # noqa: BLE001 - any compiler failure: go on eagerly
            self._fail(e)
            out = self.model(x)
        self.compile_seconds += time.perf_counter() - start
        return out

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and update of one batch: (logits, loss). The first compiled backward
        falls back to eager like the forward does, redoing the batch."""
        optimizer.zero_grad(set_to_none=True)
        logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        if self._backward_checked:
            loss.backward()
        else:
            logits, loss = self._first_backward(optimizer, x, y, loss, logits)
        optimizer.step()
        return logits, loss

    def _first_backward(self, optimizer, x, y, loss, logits):
        start = time.perf_counter()
        try:
            loss.backward()
        except Exception as e:  # noqa: BLE001 - the backward graph compiles on its first call
            self._fail(e)
            optimizer.zero_grad(set_to_none=True)
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
        self._backward_checked = True
        self.compile_seconds += time.perf_counter() - start
        return logits, loss

    def _fail(self, error: BaseException) -> None:
        self.fallback = one_line(error).split(" Set TORCHDYNAMO_VERBOSE")[0]
        self.fn = self.model
        warn(f"torch.compile failed ({self.fallback[:300]}); training on eagerly")
