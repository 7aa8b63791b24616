"""Training throughput of the plain and the fast path, side by side in one process, and the rate
of the data pipeline that feeds them: what the ``bench`` entry point measures (it lives beside the
other benchmarks, not in the library: it measures the library).

``BenchSpec`` is what a bench run measures, with every allowed value and range (as ``TrainConfig``
is for a training): the entry point builds one from its options, ``run`` measures it, and the
processes of ``--share`` receive it whole.

A configuration is one (mode, norm, batch size). Each trains a fresh ResNet through the engine's
own step (``resnorm.fast.Runner.step``) on batches from the runner's own feeding over random uint8
images placed as that mode places them, so what is timed is what ``train`` runs.
The first ``warmup`` steps (compiling, cuDNN autotuning) are timed apart from the ``steps`` that
give images per second; the device is synchronised before every clock read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from resnorm import PROJECT_ROOT, fast, markdown
from resnorm.bundle import DataBundle, Split
from resnorm.config import COMPILE_MODES, DEVICES, TrainConfig
from resnorm.data import batches
from resnorm.engine import prepare
from resnorm.errors import ConfigError, ResnormError
from resnorm.folders import decode_class_tree
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


@dataclass(frozen=True)
class ShareRate:
    processes: int  # trainings at once on one device
    images_per_second: float  # all of them together, over the wall time their timed stretches span
    per_process: float  # the mean of their own rates


@dataclass(frozen=True)
class FeedRate:
    key: str  # plain, decode, fast: the metric is feed_{key}_img_per_s
    pipeline: str
    images_per_second: float
    detail: str


def _sync(device: torch.device) -> None:
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
    _sync(device)
    start = time.perf_counter()
    for i, (x, y) in enumerate(stream):
        if i == warmup:
            _sync(device)
            warm = time.perf_counter()
            warmup_seconds = warm - start
            if barrier is not None:
                barrier()
                warm = time.perf_counter()
            began = time.time()
        t.runner.step(t.optimizer, x, y)
    _sync(device)
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


def feed_rates(image_size: int, device: torch.device, files: int, batch_size: int = 32) -> list[FeedRate]:
    """Rates of getting augmented batches to the model: the study's PIL DataLoader over JPEG files,
    the one-time decode into the uint8 cache, and the fast path's cache -> augmented batch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    rates = []
    workers = os.cpu_count() or 1
    batch_size = max(1, min(batch_size, files // 4))  # a few batches even from a handful of files
    with tempfile.TemporaryDirectory() as tmp:
        _write_jpegs(Path(tmp), files, int(image_size * 1.17), classes=4)
        plain = transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.RandomCrop(image_size, padding=image_size // 8),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )
        loader = DataLoader(
            datasets.ImageFolder(tmp, plain),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        start = time.perf_counter()
        seen = 0
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            seen += len(x)
        _sync(device)
        rates.append(
            FeedRate(
                "plain",
                "plain: PIL + DataLoader",
                seen / (time.perf_counter() - start),
                f"{workers} workers, JPEG {int(image_size * 1.17)}px -> resize, crop, flip",
            )
        )
        start = time.perf_counter()
        _, images, _ = decode_class_tree(Path(tmp), image_size)
        rates.append(
            FeedRate(
                "decode",
                "decode once into the uint8 cache",
                len(images) / (time.perf_counter() - start),
                f"PIL in {min(32, workers + 4)} threads, once per folder and image size",
            )
        )
    cache = random_bundle(max(files, 8 * batch_size), image_size, 4)
    placed, where = fast.place_images(cache, device)
    generator = torch.Generator().manual_seed(0)
    for _ in batches(placed.train, batch_size, device, generator, image_size // 8):  # warm-up
        pass
    _sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(3):
        for x, _ in batches(placed.train, batch_size, device, generator, image_size // 8, torch.channels_last):
            seen += len(x)
    _sync(device)
    rates.append(
        FeedRate(
            "fast",
            "fast: uint8 cache -> augmented batch",
            seen / (time.perf_counter() - start),
            f"cache in {where}, crop + flip as tensor ops on {device.type}",
        )
    )
    return rates


def _write_jpegs(root: Path, files: int, size: int, classes: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def run(
    spec: BenchSpec, device: torch.device, progress=print
) -> tuple[list[TrainRate], list[FeedRate], list[ShareRate]]:
    """Every (batch size, norm, mode), then the feeding rates, then ``share``: that many trainings
    at once on the device (``spec.shared()``), each in its own process."""
    rates = []
    if "fast" in spec.modes:  # before anything touches torch's compiler: it fixes its cache folder on first use
        fast.configure_backends(fast.resolve_speed("fast", device, 32), device)
    for batch_size in spec.batch_sizes:
        for norm in spec.norms:
            for mode in spec.modes:
                r = train_rate(spec, mode, norm, batch_size, device)
                progress(
                    f"{mode:>5} {norm:>8} bs {batch_size:>4}: {r.images_per_second:10.1f} img/s "
                    f"({r.ms_per_step:.2f} ms/step, warm-up {r.warmup_seconds:.1f} s)"
                )
                rates.append(r)
    feeds = feed_rates(spec.image_size, device, spec.feed_files) if spec.feed_files else []
    shares = []
    for k in spec.share:
        shares.append(shared_rate(spec, k, device))
        what = spec.shared()
        progress(
            f"{k} at once ({what['mode']} {what['norm']} bs {what['batch_size']}): "
            f"{shares[-1].images_per_second:10.1f} img/s together"
        )
    return rates, feeds, shares


def table(rates: Sequence[TrainRate]) -> list[dict]:
    """One row per (norm, batch size): each mode's img/s and ms/step, and fast/plain."""
    rows: dict[tuple[str, int], dict] = {}
    for r in rates:
        row = rows.setdefault((r.norm, r.batch_size), {"norm": r.norm, "batch_size": r.batch_size})
        row[f"{r.mode}_img_per_s"] = round(r.images_per_second, 1)
        row[f"{r.mode}_ms_per_step"] = round(r.ms_per_step, 3)
        if r.mode == "fast":
            row["fast_compile_s"] = round(r.compile_seconds, 1)
        if r.peak_memory_mb is not None:
            row[f"{r.mode}_peak_mb"] = round(r.peak_memory_mb)
    for row in rows.values():
        if "plain_img_per_s" in row and "fast_img_per_s" in row:
            row["fast_over_plain"] = round(row["fast_img_per_s"] / row["plain_img_per_s"], 2)
    reference = {b: row.get("fast_img_per_s") for (norm, b), row in rows.items() if norm == "torch_bn"}
    for (_, b), row in rows.items():
        if reference.get(b) and "fast_img_per_s" in row:
            row["fast_over_torch_bn"] = round(row["fast_img_per_s"] / reference[b], 2)
    return list(rows.values())


def as_dicts(items) -> list[dict]:
    return [asdict(i) for i in items]


def metrics(rates: Sequence[TrainRate], feeds: Sequence[FeedRate], shares: Sequence[ShareRate]) -> dict[str, float]:
    """The MLflow metrics of a bench run: ``{mode}_{norm}_bs{b}_img_per_s``, ``..._ms_per_step``,
    ``..._compile_s`` (fast), ``fast_over_plain_{norm}_bs{b}``, ``feed_{key}_img_per_s``, ``share{k}_img_per_s``."""
    out: dict[str, float] = {}
    for r in rates:
        key = f"{r.mode}_{r.norm}_bs{r.batch_size}"
        out[f"{key}_img_per_s"] = r.images_per_second
        out[f"{key}_ms_per_step"] = r.ms_per_step
        if r.mode == "fast":
            out[f"{key}_compile_s"] = r.compile_seconds
    for r in rates:
        plain = out.get(f"plain_{r.norm}_bs{r.batch_size}_img_per_s")
        if r.mode == "fast" and plain:
            out[f"fast_over_plain_{r.norm}_bs{r.batch_size}"] = r.images_per_second / plain
    out.update({f"feed_{f.key}_img_per_s": f.images_per_second for f in feeds})
    out.update({f"share{sh.processes}_img_per_s": sh.images_per_second for sh in shares})
    return out


@dataclass
class Report:
    """A bench run's tables (one row per norm and batch size; feeding; sharing) and its Markdown."""

    train: pd.DataFrame
    feed: pd.DataFrame
    share: pd.DataFrame
    markdown: str


def report(rates, feeds, shares, title: str) -> Report:
    frame = pd.DataFrame(table(rates)).set_index(["norm", "batch_size"])
    feed = pd.DataFrame(as_dicts(feeds), columns=["pipeline", "images_per_second", "detail"])
    shared = pd.DataFrame(as_dicts(shares))
    if shares and shares[0].processes == 1:
        shared["over_one"] = shared["images_per_second"] / shares[0].images_per_second
    text = [f"# {title}", "", markdown.table(frame.set_axis([f"{norm} bs{bs}" for norm, bs in frame.index]))]
    if feeds:
        text += ["", "## feeding the model (img/s)", "", markdown.table(feed.set_index("pipeline").round(1))]
    if shares:
        text += [
            "",
            "## trainings at once on one device (img/s together)",
            "",
            markdown.table(shared.set_index("processes").round(2)),
        ]
    fallbacks = sorted({r.fallback for r in rates if r.fallback})
    if fallbacks:
        text += ["", "torch.compile failed, measured eagerly: " + "; ".join(fallbacks)]
    return Report(frame, feed, shared, "\n".join(text) + "\n")


def shared_rate(spec: BenchSpec, processes: int, device: torch.device, timeout: float = 900) -> ShareRate:
    """Total training rate of ``processes`` trainings of ``spec.shared()`` at once on one device, each
    its own process (as a sweep's children are): they warm up, wait for each other, and the total is
    their images over the wall time from the first timed step to the last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as rendezvous:
        job = json.dumps(
            {"spec": asdict(spec), "device": str(device), "rendezvous": rendezvous, "processes": processes}
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.throughput", job],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(processes)
        ]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise ResnormError(
                    f"a bench worker failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}"
                )
            results.append(json.loads(out.strip().splitlines()[-1]))
    images = sum(r["images_per_second"] * (r["timed_to"] - r["timed_from"]) for r in results)
    span = max(r["timed_to"] for r in results) - min(r["timed_from"] for r in results)
    return ShareRate(processes, images / span, sum(r["images_per_second"] for r in results) / processes)


def _worker(job: dict) -> None:
    """One of ``shared_rate``'s processes: prints its TrainRate as JSON."""
    rendezvous, processes = Path(job["rendezvous"]), job["processes"]

    def barrier() -> None:
        (rendezvous / str(os.getpid())).touch()
        deadline = time.monotonic() + 600
        while len(list(rendezvous.iterdir())) < processes:
            if time.monotonic() > deadline:
                raise ResnormError("the other bench workers did not get through their warm-up")
            time.sleep(0.01)

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()}
    spec = BenchSpec(**fields)
    print(
        json.dumps(asdict(train_rate(spec, device=torch.device(job["device"]), barrier=barrier, **spec.shared()))),
        flush=True,
    )


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
