"""One image file -> uint8 pixels at a square size, as a viewer shows the image: the one decoder
for training data (``resnorm.folders``) and for the images GradCAM explains (``resnorm.explain``)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from resnorm.errors import DataError


def read_image(path: str | Path, image_size: int, channels: int = 3) -> tuple[torch.Tensor, str]:
    """One image file as uint8 (channels, image_size, image_size), as a viewer shows it, and the
    SHA-256 of its bytes.

    The EXIF orientation is applied (a phone photo stored sideways comes out upright); the first
    frame of an animation is read; grayscale, palette, CMYK and RGBA files become RGB (or L for one
    channel), 16-bit ones scaled, float ones read in [0, 1] (or [0, 255]). The short side is resized
    to image_size and the centre cropped square, as torchvision's Resize + CenterCrop do."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as img:  # read once: the bytes are hashed too
            upright = ImageOps.exif_transpose(img)
            fitted = ImageOps.fit(
                _to_8bit(upright, "L" if channels == 1 else "RGB"), (image_size, image_size), Image.Resampling.BILINEAR
            )
            array = np.asarray(fitted, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e} Shrink the file or remove it from the folder") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: cannot identify image file {str(path)!r}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    pixels = torch.from_numpy(array.reshape(image_size, image_size, -1).transpose(2, 0, 1).copy())
    return pixels, hashlib.sha256(raw).hexdigest()


def decode_image(path: str | Path, image_size: int, channels: int = 3) -> torch.Tensor:
    """``read_image``'s pixels alone."""
    return read_image(path, image_size, channels)[0]


def _to_8bit(img: Image.Image, mode: str) -> Image.Image:
    """``mode`` (RGB or L), 8 bits a channel, every mode Pillow opens converted by what its values mean.

    16- and 32-bit integer grayscale (PNG's I;16 and I) is scaled from 0..65535, not clipped (Pillow's
    own convert would saturate nearly every pixel to white); 32-bit float (mode F, as scientific TIFFs
    hold) is read as [0, 1], or as [0, 255] when its values reach past 1, and refused by name when they
    fit neither (Pillow's convert would clip [0, 1] to black)."""
    if img.mode == "F":
        wide = np.asarray(img, dtype=np.float64)
        low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise ValueError(
                f"a 32-bit float image with values from {low:g} to {high:g}; float images are read in "
                "[0, 1] (or [0, 255]): rescale it or save it as 8 or 16 bits"
            )
        scale = 255.0 if high <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(wide * scale), 0, 255).astype(np.uint8), "L")
    elif img.mode == "I" or img.mode.startswith("I;16"):
        wide = np.asarray(img, dtype=np.float64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ValueError(
                f"a 32-bit integer image with values from {wide.min():g} to {wide.max():g}; integer "
                "images are read as 16 bits (0 to 65535)"
            )
        img = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


# Formats Pillow knows by name but cannot decode by itself: EPS and PostScript need Ghostscript,
# MPEG has no decoder; its stub plugins (HDF5, GRIB, BUFR, WMF) need handlers of their own.
UNDECODED = frozenset({".eps", ".ps", ".mpg", ".mpeg"})


def image_extensions() -> frozenset[str]:
    """The file extensions of every format Pillow opens and decodes by itself (``.jpg``, ``.png``,
    ``.gif``, ``.tif``, ``.webp``, ``.bmp``, ...)."""
    Image.init()

    def decodes(fmt: str) -> bool:
        factory = Image.OPEN[fmt][0] if fmt in Image.OPEN else None
        return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if decodes(fmt) and ext not in UNDECODED)
