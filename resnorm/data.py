"""Data sources -> train/val/test splits of uint8 images, and the study's augmentation.

Every source is decoded once into ``uint8`` tensors of shape (N, C, H, W) at ``image_size``
(``resnorm.bundle``); training draws shuffled, augmented batches from them with tensor ops, so the
same code runs on the CPU and on a GPU and a seed fixes every draw.

Sources (the ``data`` parameter):

* ``digits``: the 8x8 handwritten digits that scikit-learn ships (1,797 images, 10 classes).
* ``synthetic``: a small generated set with learnable classes, for tests and smoke runs.
* a path: an image folder (``resnorm.folders``): ``train/``, ``val/`` and ``test/`` with one
  sub-folder per class each, or a single tree of class folders that is split here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
import torch.nn.functional as F

from resnorm.bundle import DataBundle, Split, build, check_fits, split_indices
from resnorm.folders import load_folder


def load_data(data: str, image_size: int) -> DataBundle:
    """Load the source named by ``data`` at ``image_size`` x ``image_size`` pixels (checked by TrainConfig)."""
    if data == "digits":
        return _digits(image_size)
    if data == "synthetic":
        return synthetic(image_size)
    return load_folder(Path(data).expanduser(), image_size)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, h, w) batch to (N, C, size, size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _digits(image_size: int) -> DataBundle:
    digits = sklearn.datasets.load_digits()
    # Resizing goes through float32: 4 bytes a pixel, then 1 for the uint8 result.
    check_fits("digits", len(digits.images), image_size, channels=1, bytes_per_value=5)
    # Pixel values are 0..16; scale them to the 0..255 of ordinary 8-bit images.
    images = torch.as_tensor(np.rint(digits.images * (255 / 16)), dtype=torch.uint8).unsqueeze(1)
    source = str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    classes = [str(c) for c in digits.target_names]
    parts = split_indices("digits", digits.target)
    return build("digits", source, classes, _resize(images, image_size), digits.target, parts)


def synthetic(image_size: int = 16, per_class: int = 40, num_classes: int = 4, seed: int = 0) -> DataBundle:
    """Noisy RGB images whose class sets the colour and the quadrant of a bright square."""
    n = per_class * num_classes
    check_fits("synthetic", n, image_size, bytes_per_value=5)  # drawn as float32, kept as uint8
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, 3, image_size, image_size, generator=g) * 0.5
    half = image_size // 2
    for c in range(num_classes):
        rows = labels == c
        y0, x0 = (c // 2 % 2) * half, (c % 2) * half
        x[rows, c % 3, y0 : y0 + half, x0 : x0 + half] += 0.5
    images = (x * 255).round().to(torch.uint8)
    parts = split_indices("synthetic", labels.numpy())
    return build("synthetic", "synthetic", [f"class{c}" for c in range(num_classes)], images, labels.numpy(), parts)


def augment_draws(n: int, generator: torch.Generator, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx) in [0, 2 * padding] and flip flags for ``n`` images."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Crop every image of a (N, C, H, W) batch at (dy, dx) of its zero-padded self and flip the
    flagged ones: one gather, on the images' device."""
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (N, 1, H, 1)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def batches(
    split: Split,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    augment_padding: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images as float in [0, 1], labels) on ``device``.

    With a ``generator`` the order is shuffled, the last incomplete batch is dropped (batch norm
    needs more than one sample) and, if ``augment_padding`` > 0, every image is augmented. The
    epoch's draws are made up front on the CPU and sent to the device once, so the same seed gives
    the same epoch on any device and a batch costs no host round trip. Without a generator the split
    is walked in order, whole, with no augmentation (evaluation).
    """
    n = len(split)
    src = split.images.device
    staged = device.type == "cuda" and src.type == "cpu"
    draws: tuple[torch.Tensor, ...] | None = None
    if generator is None:
        order, stop = torch.arange(n, device=src), n
    else:
        order, stop = torch.randperm(n, generator=generator), n - n % batch_size
        draws = augment_draws(n, generator, augment_padding) if augment_padding else None
        order = order.to(src, non_blocking=True)
        if draws is not None:
            draws = tuple(d.to(device, non_blocking=True) for d in draws)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x, y = split.images[idx], split.labels[idx]
        if staged:
            # A gathered batch is fresh pageable memory, which CUDA copies synchronously; pinned,
            # the copy runs beside the previous step (torch keeps the block until the copy is done).
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if draws is not None:
            dy, dx, flip = (d[start : start + batch_size] for d in draws)
            x = crop_flip(x, dy, dx, flip, augment_padding)
        yield x.float().div_(255).contiguous(memory_format=memory_format), y
