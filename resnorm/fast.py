"""The fast training path: how a run uses its device, chosen once per run.

``plain`` is the study as it was run: float32, NCHW, eager. ``fast`` (the default on CUDA) keeps
the decoded uint8 images on the device, trains under bf16 autocast in channels_last, compiles
the model with ``torch.compile`` (CUDA graphs through ``reduce-overhead`` where batches are small
enough to be launch-bound) and steps a fused optimizer. The CPU keeps the plain, exact path
unless ``fast`` is asked for, which the tests do to check that both paths learn the same.
"""

from __future__ import annotations

import dataclasses

import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from resnorm.data import DataBundle, Split
from resnorm.errors import ConfigError, one_line

MODES = ("auto", "plain", "fast")
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
        parts = ["bf16 autocast" if self.autocast else "float32", "channels_last" if self.channels_last else "NCHW",
                 f"torch.compile({self.compile_mode})" if self.compile_mode else "eager"]
        return "fast (" + ", ".join(parts) + ")"


def resolve_speed(mode: str, device: torch.device, batch_size: int, compile_mode: str = "auto") -> Speed:
    """``auto`` is ``fast`` on CUDA and ``plain`` elsewhere; ``compile_mode`` overrides the choice
    of torch.compile mode (``auto``: CUDA graphs for small batches on CUDA, ``none``: eager)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "auto":
        mode = "fast" if device.type == "cuda" else "plain"
    if mode == "plain":
        return Speed("plain")
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
    from resnorm import snapshots

    # torch fills the variable with its /tmp default as soon as something imports its compiler
    # (torchvision does); a folder the user chose is kept.
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default = os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):
        default = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(snapshots.home() / "torchinductor")


def autocast(speed: Speed, device: torch.device):
    return torch.autocast(device.type, dtype=speed.autocast, enabled=speed.autocast is not None)


def place_images(data: DataBundle, device: torch.device) -> tuple[DataBundle, str]:
    """The uint8 images where the fast path reads them: on the GPU when they fit beside training,
    else where they are, in host memory (``batches`` stages each gathered batch through pinned
    memory for an asynchronous copy). Returns (data, where)."""
    if device.type != "cuda":
        return data, "host"
    need = sum(data.split(s).images.numel() for s in ("train", "val", "test"))
    free, _ = torch.cuda.mem_get_info(device)
    if need + TRAINING_RESERVE_BYTES <= free:
        return _moved(data, lambda t: t.to(device)), "gpu"
    return data, "host memory (batches staged through pinned memory)"


def _moved(data: DataBundle, move) -> DataBundle:
    splits = {s: Split(move(data.split(s).images), move(data.split(s).labels)) for s in ("train", "val", "test")}
    return dataclasses.replace(data, **splits)


class CompiledModel:
    """``torch.compile`` of a model that falls back to eager, with one line on stderr, when
    compiling fails; ``compile_seconds`` is the time the first calls spent compiling."""

    def __init__(self, model: nn.Module, compile_mode: str | None) -> None:
        self.model = model
        self.compile_mode = compile_mode
        # Static shapes: one graph for the training batch and one for the evaluation batch, each
        # specialised (and, under reduce-overhead, recorded as a CUDA graph) for its size.
        self.fn = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model
        self.fallback: str | None = None  # why compiling failed
        self.compile_seconds = 0.0
        self._first = {True: True, False: True}  # first call in train mode / eval mode
        self.backward_checked = False  # the backward graph compiles at the first backward (engine.train_step)

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None and self.fallback is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled and self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        first = self._first[self.model.training] and self.compiled
        if not first:
            return self.fn(x)
        self._first[self.model.training] = False
        start = time.perf_counter()
        try:
            out = self.fn(x)
        except Exception as e:  # noqa: BLE001 - any compiler failure: go on eagerly
            self.fail(e)
            out = self.model(x)
        self.compile_seconds += time.perf_counter() - start
        return out

    def fail(self, error: BaseException) -> None:
        self.fallback = one_line(error).split(" Set TORCHDYNAMO_VERBOSE")[0]
        self.fn = self.model
        print(f"warning: torch.compile failed ({self.fallback[:300]}); training on eagerly", file=sys.stderr, flush=True)
