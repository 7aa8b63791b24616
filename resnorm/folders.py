"""Image folders, loaded in one walk: listed (``list_folder``: every file once whatever links point at it,
and every check the listing allows), decoded (``decode``: Pillow, in parallel threads, at ``image_size``),
split and built (``resnorm.bundle``). A folder is either split already (``train/``, ``val/``, ``test/``,
the same class folders in each) or one tree of class folders that is split 70/15/15 per class; images
byte-identical across splits are named. The built bundle is kept under ``$RESNORM_HOME/decoded/``, keyed
by every file's path, size and modification time and by ``image_size``, so the runs of a sweep decode a
folder once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from resnorm import home
from resnorm.bundle import SPLITS, DataBundle, Split, build, check_classes, check_fits, split_indices
from resnorm.errors import DataError, one_line, warn
from resnorm.images import image_extensions, read_image


@dataclass(frozen=True)
class Listing:
    """What a tree of class folders holds: its classes, its image files (as listed, links kept) with
    their labels, and the files it skips because Pillow does not open them by their extension."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    skipped: tuple[str, ...] = ()


def _visible(name: str) -> bool:
    """Hidden names (``.Trash-1000``, ``.ipynb_checkpoints``, macOS's ``._photo.jpg``) are not the user's data."""
    return not name.startswith(".")


def list_class_tree(root: Path) -> Listing:
    """Every visible sub-folder of ``root`` is a class; every visible file below it (at any depth,
    linked folders followed, each folder once) whose extension Pillow opens is an image of it."""
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))
    except OSError as e:
        raise DataError(f"{root}: {e.strerror or e}") from None
    if not classes:
        raise DataError(f"{root}: Couldn't find any class folder in {root} (hidden folders are not classes)")
    readable = image_extensions()
    paths, labels, skipped, empty = [], [], [], []
    for label, name in enumerate(classes):
        _check_name(name, root)
        found = 0
        seen = set()
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            seen.add(os.path.realpath(folder))
            dirs[:] = sorted(d for d in dirs if _visible(d) and os.path.realpath(os.path.join(folder, d)) not in seen)
            for file in sorted(f for f in files if _visible(f)):
                path = os.path.join(folder, file)
                if os.path.splitext(file)[1].lower() not in readable:
                    skipped.append(os.path.relpath(path, root))
                    continue
                _check_name(os.path.relpath(path, root), root)
                paths.append(path)
                labels.append(label)
                found += 1
        if not found:
            empty.append(name)
    if empty:
        raise DataError(
            f"{root}: found no valid file for the classes {', '.join(empty)}: no image Pillow opens "
            f"(any of {len(readable)} extensions such as .jpg, .png, .gif, .tif, .webp)"
        )
    return Listing(classes, paths, np.array(labels, dtype=np.int64), tuple(skipped))


def _check_name(path: str, root: Path) -> None:
    """An image or class name that is not valid UTF-8, or a link to nothing, is refused by name."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DataError(
            f"{root}: the name {shown} is not valid UTF-8; rename it (MLflow and the reports need UTF-8)"
        ) from None
    full = os.path.join(root, path)
    if os.path.islink(full) and not os.path.exists(full):
        raise DataError(
            f"{full} is a link to {os.readlink(full)}, which does not exist; remove the link or restore its target"
        )


def _own_files(listings: dict[str, Listing]) -> dict[str, Listing]:
    """Each image file once, whatever links the folder holds: where several listed paths lead to one
    file, it stays where the file itself is listed (not through a link), else at its first path."""
    owner: dict[str, tuple[str, str]] = {}
    for split, listing in listings.items():
        for p in listing.paths:
            real = os.path.realpath(p)
            if real not in owner or (p == real and owner[real][1] != real):
                owner[real] = (split, p)
    kept = {}
    for split, listing in listings.items():
        keep = [i for i, p in enumerate(listing.paths) if owner[os.path.realpath(p)] == (split, p)]
        kept[split] = replace(listing, paths=[listing.paths[i] for i in keep], labels=listing.labels[keep])
    return kept


@dataclass(frozen=True)
class Folder:
    """An image folder as listed: its classes, every image file once (as listed, links kept) with its label
    and the split it lies in ("" for a single class tree, split later), and the files left out."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    splits: tuple[str, ...]  # per file
    skipped: tuple[str, ...] = ()

    @property
    def given_splits(self) -> bool:
        return bool(self.splits) and self.splits[0] != ""


def list_folder(root: Path) -> Folder:
    """Step 1 of loading a folder: its files, and every check the listing allows - a folder, all of train/,
    val/, test/ or none, the same class folders in each, at least two classes; files Pillow does not open
    by their extension are left out on one ``warning:`` line."""
    if not root.is_dir():
        raise DataError(
            f"data {str(root)!r} is not a folder; give 'digits', 'synthetic' or an image folder "
            "(train/, val/, test/ with class sub-folders, or one tree of class folders)"
        )
    root = root.resolve()
    listings = _listings(root)
    classes = next(iter(listings.values())).classes
    for s, listing in listings.items():
        if listing.classes != classes:
            raise DataError(
                f"class folders differ between splits: train/ has {', '.join(classes)} but {s}/ has "
                f"{', '.join(listing.classes)}"
            )
    check_classes(str(root), classes)
    skipped = [p for listing in listings.values() for p in listing.skipped]
    if skipped:
        warn(
            f"{root}: {len(skipped)} file(s) left out, not images Pillow opens by their extension: "
            f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}"
        )
    return Folder(
        root,
        classes,
        [p for listing in listings.values() for p in listing.paths],
        np.concatenate([listing.labels for listing in listings.values()]),
        tuple(s for s, listing in listings.items() for _ in listing.paths),
        tuple(skipped),
    )


def _listings(root: Path) -> dict[str, Listing]:
    """The folder's listings: per split (train/, val/, test/), or one (key "") for a single class tree."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and len(present) != len(SPLITS):
        missing = sorted(set(SPLITS) - set(present))
        raise DataError(
            f"{root} has {', '.join(present)}/ but no {', '.join(missing)}/; give all of train/, val/, test/"
        )
    listings = {s: list_class_tree(root / s) for s in SPLITS} if present else {"": list_class_tree(root)}
    return _own_files(listings)


def load_folder(root: Path, image_size: int) -> DataBundle:
    """A folder's bundle, in one walk: listed (``list_folder``), decoded (``decode``: Pillow, in parallel),
    split (``bundle.split_indices``: as its folders say, or 70/15/15 per class) and built
    (``bundle.build``). The decoded cache holds the built bundle, keyed by the listing: a folder listed
    as it was before skips the three other steps."""
    folder = list_folder(root)
    cached = home.decoded_dir() / f"{folder.root.name}-{image_size}px-{_cache_key(folder, image_size)}.pt"
    data = _load_cached(cached, folder.root)
    if data is None:
        check_fits(folder.root, len(folder.paths), image_size)  # before decoding: it may not fit in memory
        images, hashes = decode(folder, image_size)
        parts = split_indices(str(folder.root), folder.labels, folder.splits if folder.given_splits else None)
        duplicates = _cross_split_duplicates(folder, hashes, parts)
        data = build(str(folder.root), str(folder.root), folder.classes, images, folder.labels, parts, duplicates)
        _save_cached(cached, data)
    if data.duplicates:
        warn(
            f"{data.name}: {len(data.duplicates)} image(s) are byte-identical across train/val/test, "
            f"so the scores overstate: {'; '.join(data.duplicates[:3])}"
        )
    return data


def decode(folder: Folder, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Step 2: every listed file decoded, in parallel threads (Pillow releases the GIL while decoding),
    into one preallocated uint8 tensor (N, 3, H, W); with the SHA-256 of each file."""
    paths = folder.paths
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    hashes = [""] * len(paths)

    def decode_into(i: int) -> None:
        images[i], hashes[i] = read_image(paths[i], image_size)

    workers = min(32, (os.cpu_count() or 1) + 4)
    desc = f"decoding {folder.root.name}"
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(decode_into, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False):
            pass
    return images, hashes


def _cross_split_duplicates(folder: Folder, hashes: list[str], parts: dict[str, np.ndarray]) -> tuple[str, ...]:
    """ "a = b" for every image whose bytes appear in another split too."""
    first: dict[str, tuple[str, str]] = {}
    found = []
    for split, indices in parts.items():
        for i in indices:
            path, digest = folder.paths[i], hashes[i]
            if digest in first and first[digest][0] != split:
                found.append(f"{os.path.relpath(first[digest][1], folder.root)} = {os.path.relpath(path, folder.root)}")
            first.setdefault(digest, (split, path))
    return tuple(found)


# The decoded images of a folder are kept on disk, keyed by every file the listing reads (its
# path as listed, the path of the file itself behind any link, size and modification time), by
# the classes and by image_size, so the runs of a sweep (and later sweeps) decode a folder once.
CACHE_FORMAT = 3  # 3: EXIF orientation applied, float images scaled, hidden folders left out, links in the key


def _cache_key(folder: Folder, image_size: int) -> str:
    root = folder.root
    h = hashlib.sha256(f"{CACHE_FORMAT}:{root}:{image_size}".encode())
    for split in dict.fromkeys(folder.splits):
        h.update(f"{split}:{'/'.join(folder.classes)}\n".encode("utf-8", "surrogateescape"))
        for path, label, where in zip(folder.paths, folder.labels, folder.splits):
            if where != split:
                continue
            st = os.stat(path)
            line = f"{os.path.relpath(path, root)}:{os.path.realpath(path)}:{label}:{st.st_size}:{st.st_mtime_ns}\n"
            h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _load_cached(path: Path, root: Path) -> DataBundle | None:
    """The cached bundle, if the file is there and holds what it says (its splits' digests agree)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, mmap=True)
        splits = {s: Split(state[s]["images"], state[s]["labels"]) for s in SPLITS}
        data = DataBundle(
            str(root), str(root), tuple(state["classes"]), **splits, duplicates=tuple(state.get("duplicates", ()))
        )
        if all(data.digest(s) == state["digests"][s] for s in SPLITS):
            return data
    except Exception:  # noqa: BLE001 - a damaged cache is decoded again and rewritten
        pass
    return None


def _save_cached(path: Path, data: DataBundle) -> None:
    state = {
        "classes": list(data.classes),
        "duplicates": list(data.duplicates),
        "digests": {s: data.digest(s) for s in SPLITS},
    }
    state.update({s: {"images": data.split(s).images, "labels": data.split(s).labels} for s in SPLITS})
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)  # whole or absent, also with several runs writing it at once
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a folder it cannot write as a RuntimeError
        # A read-only file system refuses even the removal of a file never written there (EROFS):
        # the cleanup is best effort, and the run goes on with the images it decoded.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warn(f"could not keep the decoded images in {path} (the next run decodes them again): {one_line(e)[:300]}")


def decode_class_tree(root: Path, image_size: int) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """Every image of a class tree, decoded: (classes, images, labels); for benchmarks, which time it."""
    listing = list_class_tree(root)
    folder = Folder(root, listing.classes, listing.paths, listing.labels, ("",) * len(listing.paths))
    images, _ = decode(folder, image_size)
    return listing.classes, images, listing.labels
