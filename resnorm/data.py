"""Data sources -> train/val/test splits of uint8 images, and the study's augmentation.

Every source is decoded once into ``uint8`` tensors of shape (N, C, H, W) at ``image_size``;
training draws shuffled, augmented batches from them with tensor ops, so the same code runs on
the CPU and on a GPU and a seed fixes every draw.

Sources (the ``data`` parameter):

* ``digits``: the 8x8 handwritten digits that scikit-learn ships (1,797 images, 10 classes).
* ``synthetic``: a small generated set with learnable classes, for tests and smoke runs.
* a path: an image-folder root holding ``train/``, ``val/`` and ``test/`` with one sub-folder per
  class each, or a single tree of class folders that is split here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm.auto import tqdm

from resnorm.errors import DataError

SPLITS = ("train", "val", "test")
# Fractions of a source that is split here (digits, a single class tree): 70/15/15, stratified.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
# The split is drawn with this seed, not the training seed: runs with different seeds are then
# compared on the same test images.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataBundle:
    name: str  # "digits", "synthetic" or the folder's absolute path
    source: str  # where the images came from (a file or folder)
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images scaled to [0, 1]."""
        x = self.train.images.double().div_(255)
        std, mean = torch.std_mean(x, dim=(0, 2, 3))
        return mean.tolist(), std.clamp_min(1e-3).tolist()

    def digest(self, split: str) -> str:
        """A short content hash of one split (images and labels)."""
        s = self.split(split)
        h = hashlib.sha256(s.images.numpy().tobytes())
        h.update(s.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def load_data(data: str, image_size: int) -> DataBundle:
    """Load the source named by ``data`` at ``image_size`` x ``image_size`` pixels."""
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    if data == "digits":
        return _digits(image_size)
    if data == "synthetic":
        return synthetic(image_size)
    return _image_folder(Path(data).expanduser(), image_size)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, h, w) batch to (N, C, size, size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _stratified_split(labels: np.ndarray) -> dict[str, np.ndarray]:
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    val_share = VAL_FRACTION / (1 - TEST_FRACTION)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _from_arrays(name: str, source: str, classes, images: torch.Tensor, labels: np.ndarray) -> DataBundle:
    _check_classes(name, classes)
    try:
        parts = _stratified_split(labels)
    except ValueError as e:  # scikit-learn: a class too small to stratify
        raise DataError(f"{name}: too few images per class to split it 70/15/15 ({e})") from None
    targets = torch.as_tensor(labels, dtype=torch.long)
    splits = {k: Split(images[torch.as_tensor(v)], targets[torch.as_tensor(v)]) for k, v in parts.items()}
    return DataBundle(name, source, tuple(classes), **splits)


def _check_classes(where: str, classes) -> None:
    if len(classes) < 2:
        raise DataError(f"{where} has {len(classes)} class folder(s) ({', '.join(classes)}); a classifier needs at least 2")


def _digits(image_size: int) -> DataBundle:
    digits = sklearn.datasets.load_digits()
    # Pixel values are 0..16; scale them to the 0..255 of ordinary 8-bit images.
    images = torch.as_tensor(np.rint(digits.images * (255 / 16)), dtype=torch.uint8).unsqueeze(1)
    source = str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    classes = [str(c) for c in digits.target_names]
    return _from_arrays("digits", source, classes, _resize(images, image_size), digits.target)


def synthetic(image_size: int = 16, per_class: int = 40, num_classes: int = 4, seed: int = 0) -> DataBundle:
    """Noisy RGB images whose class sets the colour and the quadrant of a bright square."""
    g = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, 3, image_size, image_size, generator=g) * 0.5
    half = image_size // 2
    for c in range(num_classes):
        rows = labels == c
        y0, x0 = (c // 2 % 2) * half, (c % 2) * half
        x[rows, c % 3, y0 : y0 + half, x0 : x0 + half] += 0.5
    images = (x * 255).round().to(torch.uint8)
    return _from_arrays("synthetic", "synthetic", [f"class{c}" for c in range(num_classes)], images, labels.numpy())


def _decode(path: str, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            # Grayscale, palette and RGBA files all become RGB; the short side is resized to
            # image_size and the centre cropped square, as torchvision's Resize + CenterCrop do.
            img = ImageOps.fit(img.convert("RGB"), (image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _read_class_tree(root: Path, image_size: int, desc: str) -> tuple[list[str], torch.Tensor, np.ndarray]:
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f"{root}: {e}") from None
    paths = [p for p, _ in samples]
    labels = np.array([t for _, t in samples], dtype=np.int64)
    workers = min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(
            tqdm(pool.map(lambda p: _decode(p, image_size), paths), total=len(paths), desc=desc, unit="img", leave=False)
        )
    return classes, torch.from_numpy(np.stack(decoded)), labels


def _image_folder(root: Path, image_size: int) -> DataBundle:
    if not root.is_dir():
        raise DataError(
            f"data {str(root)!r} is not a folder; give 'digits', 'synthetic' or an image folder "
            "(train/, val/, test/ with class sub-folders, or one tree of class folders)"
        )
    root = root.resolve()
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        classes, images, labels = _read_class_tree(root, image_size, f"decoding {root.name}")
        return _from_arrays(str(root), str(root), classes, images, labels)
    if len(present) != len(SPLITS):
        missing = sorted(set(SPLITS) - set(present))
        raise DataError(f"{root} has {', '.join(present)}/ but no {', '.join(missing)}/; give all of train/, val/, test/")
    splits, classes = {}, None
    for s in SPLITS:
        names, images, labels = _read_class_tree(root / s, image_size, f"decoding {s}")
        if classes is None:
            classes = names
        elif names != classes:
            raise DataError(
                f"class folders differ between splits: train/ has {', '.join(classes)} but {s}/ has {', '.join(names)}"
            )
        splits[s] = Split(images, torch.as_tensor(labels))
    _check_classes(str(root), classes)
    return DataBundle(str(root), str(root), tuple(classes), **splits)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """The study's augmentation, per image: a random crop from the zero-padded image, then a
    horizontal flip with probability 1/2 (torchvision's RandomCrop(padding) + RandomHorizontalFlip).

    ``images`` is a (N, C, H, W) batch on any device; the draws come from ``generator`` (CPU).
    """
    n, c, h, w = images.shape
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images as float in [0, 1], labels) on ``device``.

    With a ``generator`` the order is shuffled, the last incomplete batch is dropped (batch norm
    needs more than one sample) and, if ``augment_padding`` > 0, every image is augmented. Without
    one the split is walked in order, whole, with no augmentation (evaluation).
    """
    n = len(split)
    if generator is None:
        order, stop = torch.arange(n), n
    else:
        order, stop = torch.randperm(n, generator=generator), n - n % batch_size
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = split.images[idx].to(device, non_blocking=True)
        if generator is not None and augment_padding:
            x = augment(x, generator, augment_padding)
        yield x.float().div_(255), split.labels[idx].to(device, non_blocking=True)
