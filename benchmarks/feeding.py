"""The rate of getting augmented batches to the model, for ``bench``: the study's PIL DataLoader over
JPEG files, the one-time decode of those files into the uint8 cache, and the fast path's cache ->
augmented batch, each in images per second with the device synchronised before every clock read."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.throughput import random_bundle, sync
from resnorm import fast
from resnorm.data import batches
from resnorm.folders import decode_class_tree


@dataclass(frozen=True)
class FeedRate:
    key: str  # plain, decode, fast: the metric is feed_{key}_img_per_s
    pipeline: str
    images_per_second: float
    detail: str


def feed_rates(image_size: int, device: torch.device, files: int, batch_size: int = 32) -> list[FeedRate]:
    """The three rates, in that order, over ``files`` random JPEG files a little larger than ``image_size``."""
    batch_size = max(1, min(batch_size, files // 4))  # a few batches even from a handful of files
    with tempfile.TemporaryDirectory() as tmp:
        source = int(image_size * 1.17)  # files a little larger than what the model sees, as photos are
        _write_jpegs(Path(tmp), files, source, classes=4)
        return [
            loader_rate(Path(tmp), source, image_size, device, batch_size),
            decode_rate(Path(tmp), image_size),
            cache_rate(max(files, 8 * batch_size), image_size, device, batch_size),
        ]


def loader_rate(folder: Path, source: int, image_size: int, device: torch.device, batch_size: int) -> FeedRate:
    """The plain path: torchvision's ImageFolder decoded and augmented by PIL in DataLoader workers."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    workers = os.cpu_count() or 1
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
        datasets.ImageFolder(folder, plain),
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
    sync(device)
    detail = f"{workers} workers, JPEG {source}px -> resize, crop, flip"
    return FeedRate("plain", "plain: PIL + DataLoader", seen / (time.perf_counter() - start), detail)


def decode_rate(folder: Path, image_size: int) -> FeedRate:
    """Decoding the folder once into the uint8 cache, as a training on images does first."""
    start = time.perf_counter()
    _, images, _ = decode_class_tree(folder, image_size)
    detail = f"PIL in {min(32, (os.cpu_count() or 1) + 4)} threads, once per folder and image size"
    return FeedRate("decode", "decode once into the uint8 cache", len(images) / (time.perf_counter() - start), detail)


def cache_rate(images: int, image_size: int, device: torch.device, batch_size: int) -> FeedRate:
    """The fast path: augmented batches cut from a uint8 cache placed as the fast path places it, three epochs
    after one of warm-up."""
    placed, where = fast.place_images(random_bundle(images, image_size, 4), device)
    generator = torch.Generator().manual_seed(0)
    for _ in batches(placed.train, batch_size, device, generator, image_size // 8):  # warm-up
        pass
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(3):
        for x, _ in batches(placed.train, batch_size, device, generator, image_size // 8, torch.channels_last):
            seen += len(x)
    sync(device)
    detail = f"cache in {where}, crop + flip as tensor ops on {device.type}"
    return FeedRate("fast", "fast: uint8 cache -> augmented batch", seen / (time.perf_counter() - start), detail)


def _write_jpegs(root: Path, files: int, size: int, classes: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
