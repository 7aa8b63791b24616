"""What a data source becomes: three splits of uint8 images (``Split``) and their classes
(``DataBundle``). Every source is loaded in one walk - its images made or listed and decoded (the digits
and the synthetic set in ``resnorm.data``, image folders in ``resnorm.folders``), then split
(``split_indices``: as a folder's splits say, or 70/15/15 per class) and built (``build``) here - with
the memory check every source makes before it decodes (``check_fits``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from resnorm import machine
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
    duplicates: tuple[str, ...] = ()  # images byte-identical across splits, "train/a.png = test/b.png"

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


def stratified_split(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted indices of each split, 70/15/15 per class, drawn with ``SPLIT_SEED``."""
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    val_share = VAL_FRACTION / (1 - TEST_FRACTION)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def check_classes(where: str, classes) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{where} has {len(classes)} class folder(s) ({', '.join(classes)}); a classifier needs at least 2"
        )


def split_indices(name: str, labels: np.ndarray, given: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Step 3 of loading a source: the indices of each split - as ``given`` (each image's split, a folder
    already split), else drawn 70/15/15 per class (``stratified_split``), or one line naming why not."""
    if given is not None:
        where = np.asarray(given)
        return {s: np.flatnonzero(where == s) for s in SPLITS}
    try:
        return stratified_split(labels)
    except ValueError as e:  # scikit-learn: a class too small to stratify
        raise DataError(f"{name}: too few images per class to split it 70/15/15 ({e})") from None


def build(
    name: str,
    source: str,
    classes,
    images: torch.Tensor,
    labels: np.ndarray,
    parts: dict[str, np.ndarray],
    duplicates: tuple[str, ...] = (),
) -> DataBundle:
    """Step 4: the bundle of a decoded source, ``parts`` its split indices (``split_indices``)."""
    targets = torch.as_tensor(labels, dtype=torch.long)
    splits = {k: Split(images[torch.as_tensor(v)], targets[torch.as_tensor(v)]) for k, v in parts.items()}
    return DataBundle(name, source, tuple(classes), splits["train"], splits["val"], splits["test"], duplicates)


def check_fits(root: Path | str, count: int, image_size: int, channels: int = 3, bytes_per_value: int = 1) -> None:
    """Refuse, before decoding, a source whose decoded images would not fit in the memory available."""
    need = count * channels * image_size * image_size * bytes_per_value
    available = machine.available_memory()
    if available is not None and need > 0.8 * available:
        raise DataError(
            f"{root}: {count} images at image_size {image_size} need {need / 2**30:.1f} GiB decoded, but only "
            f"{available / 2**30:.1f} GiB of memory is available; lower --image-size or use a machine with more memory"
        )
