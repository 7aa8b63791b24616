"""Training throughput of the plain and the fast path, side by side in one process, and the rate
of the data pipeline that feeds them (the ``bench`` entry point).

A configuration is one (mode, norm, batch size). Each trains a fresh ResNet through the engine's
own step (``resnorm.engine.train_step``) on batches from the engine's own feeding (``batches``) over
random uint8 images placed as that mode places them, so what is timed is what ``train`` runs.
The first ``warmup`` steps (compiling, cuDNN autotuning) are timed apart from the ``steps`` that
give images per second; the device is synchronised before every clock read.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resnorm import fast
from resnorm.config import TrainConfig
from resnorm.data import DataBundle, Split, batches, decode_class_tree
from resnorm.engine import build_model, build_optimizer, train_step
from resnorm.fast import CompiledModel, Speed

EXPERIMENT = "resnorm-bench"


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


@dataclass(frozen=True)
class FeedRate:
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
    mode: str,
    norm: str,
    batch_size: int,
    image_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    classes: int = 25,
    n: int = 2,
    compile_mode: str = "auto",
) -> TrainRate:
    """Images per second of ``steps`` training steps after ``warmup`` ones, for one configuration."""
    speed = fast.resolve_speed(mode, device, batch_size, compile_mode)
    fast.configure_backends(speed, device)
    torch._dynamo.reset()  # every configuration compiles afresh (and none hits the recompile limit)
    cfg = TrainConfig(norm=norm, batch_size=batch_size, image_size=image_size, n=n, augment=True, groups=8)
    data = random_bundle(batch_size * (warmup + steps), image_size, classes)
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device)
    optimizer = build_optimizer(cfg, model, fused=speed.fast and device.type == "cuda")
    if speed.fast:
        model = model.to(memory_format=torch.channels_last)
        data, _ = fast.place_images(data, device)
    forward = CompiledModel(model, speed.compile_mode)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fmt = torch.channels_last if speed.channels_last else torch.contiguous_format
    stream = batches(data.train, batch_size, device, torch.Generator().manual_seed(0), cfg.augment_padding, fmt)
    _sync(device)
    start = time.perf_counter()
    for i, (x, y) in enumerate(stream):
        if i == warmup:
            _sync(device)
            warm = time.perf_counter()
        train_step(model, forward, optimizer, x, y, speed, device)
    _sync(device)
    end = time.perf_counter()
    warmup_seconds = warm - start
    elapsed = end - warm
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return TrainRate(mode, norm, batch_size, steps * batch_size / elapsed, 1000 * elapsed / steps, warmup_seconds,
                     forward.compile_seconds, peak, speed.describe(), forward.fallback)


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
        plain = transforms.Compose([
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.RandomCrop(image_size, padding=image_size // 8),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ])
        loader = DataLoader(datasets.ImageFolder(tmp, plain), batch_size=batch_size, shuffle=True,
                            num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                            persistent_workers=False)
        start = time.perf_counter()
        seen = 0
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            seen += len(x)
        _sync(device)
        rates.append(FeedRate("plain: PIL + DataLoader", seen / (time.perf_counter() - start),
                              f"{workers} workers, JPEG {int(image_size * 1.17)}px -> resize, crop, flip"))
        start = time.perf_counter()
        _, images, _ = decode_class_tree(Path(tmp), image_size, "decoding")
        rates.append(FeedRate("decode once into the uint8 cache", len(images) / (time.perf_counter() - start),
                              f"PIL in {min(32, workers + 4)} threads, once per folder and image size"))
    cache = random_bundle(max(files, 8 * batch_size), image_size, 4)
    placed, where = fast.place_images(cache, device) if device.type == "cuda" else (cache, "host")
    generator = torch.Generator().manual_seed(0)
    for _ in batches(placed.train, batch_size, device, generator, image_size // 8):  # warm-up
        pass
    _sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(3):
        for x, _ in batches(placed.train, batch_size, device, generator, image_size // 8, torch.channels_last):
            seen += len(x)
    _sync(device)
    rates.append(FeedRate("fast: uint8 cache -> augmented batch", seen / (time.perf_counter() - start),
                          f"cache in {where}, crop + flip as tensor ops on {device.type}"))
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
    norms: Sequence[str],
    batch_sizes: Sequence[int],
    modes: Sequence[str],
    image_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    classes: int,
    n: int,
    compile_mode: str,
    feed_files: int,
    progress=print,
) -> tuple[list[TrainRate], list[FeedRate]]:
    rates = []
    if "fast" in modes:  # before anything touches torch's compiler: it fixes its cache folder on first use
        fast.configure_backends(fast.resolve_speed("fast", device, 32), device)
    for batch_size in batch_sizes:
        for norm in norms:
            for mode in modes:
                r = train_rate(mode, norm, batch_size, image_size, device, steps, warmup, classes, n, compile_mode)
                progress(f"{mode:>5} {norm:>8} bs {batch_size:>4}: {r.images_per_second:10.1f} img/s "
                         f"({r.ms_per_step:.2f} ms/step, warm-up {r.warmup_seconds:.1f} s)")
                rates.append(r)
    feeds = feed_rates(image_size, device, feed_files) if feed_files else []
    return rates, feeds


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
    for (norm, b), row in rows.items():
        if reference.get(b) and "fast_img_per_s" in row:
            row["fast_over_torch_bn"] = round(row["fast_img_per_s"] / reference[b], 2)
    return list(rows.values())


def as_dicts(items) -> list[dict]:
    return [asdict(i) for i in items]
