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
import io
import dataclasses
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
from tqdm.auto import tqdm

from resnorm import home
from resnorm.errors import DataError, warn

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


def load_data(data: str, image_size: int) -> DataBundle:
    """Load the source named by ``data`` at ``image_size`` x ``image_size`` pixels (checked by TrainConfig)."""
    if data == "digits":
        return _digits(image_size)
    if data == "synthetic":
        return synthetic(image_size)
    bundle = _image_folder(Path(data).expanduser(), image_size)
    if bundle.duplicates:
        warn(f"{bundle.name}: {len(bundle.duplicates)} image(s) are byte-identical across train/val/test, "
             f"so the scores overstate: {'; '.join(bundle.duplicates[:3])}")
    return bundle


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
    # Resizing goes through float32: 4 bytes a pixel, then 1 for the uint8 result.
    _check_fits("digits", len(digits.images), image_size, channels=1, bytes_per_value=5)
    # Pixel values are 0..16; scale them to the 0..255 of ordinary 8-bit images.
    images = torch.as_tensor(np.rint(digits.images * (255 / 16)), dtype=torch.uint8).unsqueeze(1)
    source = str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    classes = [str(c) for c in digits.target_names]
    return _from_arrays("digits", source, classes, _resize(images, image_size), digits.target)


def synthetic(image_size: int = 16, per_class: int = 40, num_classes: int = 4, seed: int = 0) -> DataBundle:
    """Noisy RGB images whose class sets the colour and the quadrant of a bright square."""
    n = per_class * num_classes
    _check_fits("synthetic", n, image_size, bytes_per_value=5)  # drawn as float32, kept as uint8
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, 3, image_size, image_size, generator=g) * 0.5
    half = image_size // 2
    for c in range(num_classes):
        rows = labels == c
        y0, x0 = (c // 2 % 2) * half, (c % 2) * half
        x[rows, c % 3, y0 : y0 + half, x0 : x0 + half] += 0.5
    images = (x * 255).round().to(torch.uint8)
    return _from_arrays("synthetic", "synthetic", [f"class{c}" for c in range(num_classes)], images, labels.numpy())


def read_image(path: str | Path, image_size: int, channels: int = 3) -> tuple[torch.Tensor, str]:
    """One image file as uint8 (channels, image_size, image_size), and the SHA-256 of its bytes.

    Grayscale, palette and RGBA files become RGB (or L for one channel), 16-bit ones scaled; the
    short side is resized to image_size and the centre cropped square, as torchvision's Resize +
    CenterCrop do."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as img:  # read once: the bytes are hashed too
            img = ImageOps.fit(_to_mode(img, "L" if channels == 1 else "RGB"), (image_size, image_size),
                               Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e} Shrink the file or remove it from the folder") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: cannot identify image file {str(path)!r}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    pixels = torch.from_numpy(pixels.reshape(image_size, image_size, -1).transpose(2, 0, 1).copy())
    return pixels, hashlib.sha256(raw).hexdigest()


def decode_image(path: str | Path, image_size: int, channels: int = 3) -> torch.Tensor:
    """``read_image``'s pixels alone."""
    return read_image(path, image_size, channels)[0]


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``mode`` (RGB or L), 8 bits a channel. 16- and 32-bit grayscale (PNG's I;16 and I) is scaled
    from 0..65535, not clipped: Pillow's own convert would saturate nearly every pixel to white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


def _list_class_tree(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, image paths, labels) of a tree of class folders."""
    # Imported here, not at the top: torchvision's import costs about 2 s a process (it loads
    # torch._dynamo), and only image folders need it; digits and synthetic runs start without it.
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f"{root}: {e}") from None
    for path in [*classes, *(p for p, _ in samples)]:
        _check_name(path, root)
    return classes, [p for p, _ in samples], np.array([t for _, t in samples], dtype=np.int64)


def _check_name(path: str, root: Path) -> None:
    """An image or class name that is not valid UTF-8, or a link to nothing, is refused by name."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DataError(f"{root}: the name {shown} is not valid UTF-8; rename it (MLflow and the reports need UTF-8)") from None
    full = os.path.join(root, path)
    if os.path.islink(full) and not os.path.exists(full):
        raise DataError(f"{full} is a link to {os.readlink(full)}, which does not exist; remove the link or restore its target")


def _own_files(listings: dict[str, tuple[list[str], list[str], np.ndarray]]) -> dict[str, tuple]:
    """Each image file once, whatever links the folder holds: where several listed paths lead to one
    file, it stays where the file itself is listed (not through a link), else at its first path."""
    owner: dict[str, tuple[str, str]] = {}
    for split, (_, paths, _) in listings.items():
        for p in paths:
            real = os.path.realpath(p)
            if real not in owner or (p == real and owner[real][1] != real):
                owner[real] = (split, p)
    kept = {}
    for split, (classes, paths, labels) in listings.items():
        keep = [i for i, p in enumerate(paths) if owner[os.path.realpath(p)] == (split, p)]
        kept[split] = (classes, [paths[i] for i in keep], labels[keep])
    return kept


def _cross_split_duplicates(root: Path, digests: dict[str, list[tuple[str, str]]]) -> tuple[str, ...]:
    """"a = b" for every image whose bytes appear in another split too ({split: [(path, sha256)]})."""
    first: dict[str, tuple[str, str]] = {}
    found = []
    for split, items in digests.items():
        for path, digest in items:
            if digest in first and first[digest][0] != split:
                found.append(f"{os.path.relpath(first[digest][1], root)} = {os.path.relpath(path, root)}")
            first.setdefault(digest, (split, path))
    return tuple(found)


def decode_class_tree(root: Path, image_size: int, desc: str) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """Decode every image of a class tree, in parallel (PIL releases the GIL while decoding), into
    one preallocated uint8 tensor: (classes, images, labels)."""
    return _decode_listing(_list_class_tree(root), image_size, desc)


def _decode_listing(listing, image_size: int, desc: str, digests: list[str] | None = None):
    """(classes, images, labels); each file's SHA-256 is appended to ``digests`` when given."""
    classes, paths, labels = listing
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    hashes = [""] * len(paths)

    def decode_into(i: int) -> None:
        images[i], hashes[i] = read_image(paths[i], image_size)

    workers = min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(decode_into, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False):
            pass
    if digests is not None:
        digests.extend(hashes)
    return classes, images, labels


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_fits(root: Path | str, count: int, image_size: int, channels: int = 3, bytes_per_value: int = 1) -> None:
    need = count * channels * image_size * image_size * bytes_per_value
    available = available_memory()
    if available is not None and need > 0.8 * available:
        raise DataError(
            f"{root}: {count} images at image_size {image_size} need {need / 2**30:.1f} GiB decoded, but only "
            f"{available / 2**30:.1f} GiB of memory is available; lower --image-size or use a machine with more memory"
        )


# The decoded images of a folder are kept on disk, keyed by every file's path, size and mtime and
# by image_size, so the runs of a sweep (and later sweeps) decode a folder once.
CACHE_FORMAT = 2  # 2: each file once whatever links, 16-bit scaled, cross-split duplicates kept


def _folder_key(root: Path, image_size: int) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}:{root}:{image_size}".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.stat(path) if os.path.exists(path) else os.lstat(path)  # a dangling link is refused later, by name
            h.update(f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _load_cached(path: Path, root: Path) -> DataBundle | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, mmap=True)
        splits = {s: Split(state[s]["images"], state[s]["labels"]) for s in SPLITS}
        return DataBundle(str(root), str(root), tuple(state["classes"]), **splits,
                          duplicates=tuple(state.get("duplicates", ())))
    except Exception:  # noqa: BLE001 - a damaged cache is decoded again and rewritten
        return None


def _save_cached(path: Path, data: DataBundle) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"classes": list(data.classes), "duplicates": list(data.duplicates)}
    state.update({s: {"images": data.split(s).images, "labels": data.split(s).labels} for s in SPLITS})
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # whole or absent, also with several runs writing it at once
    except OSError as e:  # a full or read-only disk costs the next run a decode, nothing more
        tmp.unlink(missing_ok=True)
        warn(f"could not keep the decoded images in {path}: {e}")


def _image_folder(root: Path, image_size: int) -> DataBundle:
    if not root.is_dir():
        raise DataError(
            f"data {str(root)!r} is not a folder; give 'digits', 'synthetic' or an image folder "
            "(train/, val/, test/ with class sub-folders, or one tree of class folders)"
        )
    root = root.resolve()
    cached = home.decoded_dir() / f"{root.name}-{image_size}px-{_folder_key(root, image_size)}.pt"
    data = _load_cached(cached, root)
    if data is None:
        data = _decode_folder(root, image_size)
        _save_cached(cached, data)
    return data


def _decode_folder(root: Path, image_size: int) -> DataBundle:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and len(present) != len(SPLITS):
        missing = sorted(set(SPLITS) - set(present))
        raise DataError(f"{root} has {', '.join(present)}/ but no {', '.join(missing)}/; give all of train/, val/, test/")
    listings = {s: _list_class_tree(root / s) for s in SPLITS} if present else {"": _list_class_tree(root)}
    listings = _own_files(listings)
    _check_fits(root, sum(len(paths) for _, paths, _ in listings.values()), image_size)
    if not present:
        return _decode_tree(root, listings[""], image_size)
    splits, classes, digests = {}, None, {}
    for s in SPLITS:
        hashes: list[str] = []
        names, images, labels = _decode_listing(listings[s], image_size, f"decoding {s}", hashes)
        digests[s] = list(zip(listings[s][1], hashes))
        if classes is None:
            classes = names
        elif names != classes:
            raise DataError(
                f"class folders differ between splits: train/ has {', '.join(classes)} but {s}/ has {', '.join(names)}"
            )
        splits[s] = Split(images, torch.as_tensor(labels))
    _check_classes(str(root), classes)
    return DataBundle(str(root), str(root), tuple(classes), **splits, duplicates=_cross_split_duplicates(root, digests))


def _decode_tree(root: Path, listing, image_size: int) -> DataBundle:
    """A single class tree, decoded and split here 70/15/15."""
    hashes: list[str] = []
    classes, images, labels = _decode_listing(listing, image_size, f"decoding {root.name}", hashes)
    bundle = _from_arrays(str(root), str(root), classes, images, labels)
    paths = listing[1]
    parts = _stratified_split(labels)  # the very split _from_arrays made
    digests = {s: [(paths[i], hashes[i]) for i in parts[s]] for s in SPLITS}
    return dataclasses.replace(bundle, duplicates=_cross_split_duplicates(root, digests))


def augment_draws(n: int, generator: torch.Generator, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx) in [0, 2 * padding] and flip flags for ``n`` images."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
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
    if generator is None:
        order, stop = torch.arange(n, device=src), n
        draws = None
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
