"""Image folders: listed, decoded once into uint8 tensors, and kept decoded on disk.

A folder is either split already (``train/``, ``val/``, ``test/``, the same class folders in each)
or one tree of class folders that is split here 70/15/15 per class. Every file is decoded with
Pillow, in parallel threads, at ``image_size``; each file counts once whatever links point at it,
and images byte-identical across splits are named. The decoded bundle is kept under
``$RESNORM_HOME/decoded/``, keyed by every file's path, size and modification time and by
``image_size``, so the runs of a sweep decode a folder once.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from resnorm import home
from resnorm.bundle import SPLITS, DataBundle, Split, bundle_from_arrays, check_classes, check_fits, split_arrays
from resnorm.errors import DataError, warn


def load_folder(root: Path, image_size: int) -> DataBundle:
    """The folder's bundle: from the decoded cache when it holds this folder as it is, else decoded."""
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
    if data.duplicates:
        warn(f"{data.name}: {len(data.duplicates)} image(s) are byte-identical across train/val/test, "
             f"so the scores overstate: {'; '.join(data.duplicates[:3])}")
    return data


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


def _decode_folder(root: Path, image_size: int) -> DataBundle:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and len(present) != len(SPLITS):
        missing = sorted(set(SPLITS) - set(present))
        raise DataError(f"{root} has {', '.join(present)}/ but no {', '.join(missing)}/; give all of train/, val/, test/")
    listings = {s: _list_class_tree(root / s) for s in SPLITS} if present else {"": _list_class_tree(root)}
    listings = _own_files(listings)
    check_fits(root, sum(len(paths) for _, paths, _ in listings.values()), image_size)
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
    check_classes(str(root), classes)
    return DataBundle(str(root), str(root), tuple(classes), **splits, duplicates=_cross_split_duplicates(root, digests))


def _decode_tree(root: Path, listing, image_size: int) -> DataBundle:
    """A single class tree, decoded and split here 70/15/15."""
    hashes: list[str] = []
    classes, images, labels = _decode_listing(listing, image_size, f"decoding {root.name}", hashes)
    parts = split_arrays(str(root), classes, images, labels)
    paths = listing[1]
    digests = {s: [(paths[i], hashes[i]) for i in parts[s]] for s in SPLITS}
    return bundle_from_arrays(str(root), str(root), classes, images, labels, parts,
                              duplicates=_cross_split_duplicates(root, digests))
