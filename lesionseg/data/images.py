"""Decode dermoscopy images and lesion masks into clean arrays.

:func:`load_image` gives 8-bit RGB, EXIF-oriented; :func:`load_mask` a binary mask with the repairs it applied
(:attr:`LoadedMask.notes`); :func:`model_input` the model's resized uint8 input. Unreadable or truncated files,
and declared sizes above ``max_pixels`` (decompression bombs), raise :class:`~lesionseg.errors.DataError`. What is
checked and repaired: docs/pipeline-checks.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lesionseg.errors import DataError

# The largest ISIC 2016 originals are 4288x2848 (12.2 Mpx); leave ample room.
DEFAULT_MAX_PIXELS = 64_000_000


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily and check the declared size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(path, f"declared image size is too large to decode safely ({exc})") from exc
    except FileNotFoundError as exc:
        raise DataError(path, "file not found") from exc
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError from plugins
        raise DataError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
    width, height = img.size
    if width * height > max_pixels or width <= 0 or height <= 0:
        img.close()
        raise DataError(path, f"declared size {width}x{height} exceeds the limit of {max_pixels:,} pixels")
    return img


def _decode(img: Image.Image, path: Path, draft_size: int | None = None) -> Image.Image:
    try:
        if draft_size and img.format == "JPEG":
            # DCT-domain downscaling: decodes at 1/2, 1/4 or 1/8 scale, never below draft_size.
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy: masks can be 12 Mpx
        return img
    except Exception as exc:  # truncated data raises OSError deep inside PIL
        raise DataError(path, f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer or float single-channel images to 8-bit gray."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """An 8-bit RGB PIL image, EXIF-oriented. ``draft_size`` allows JPEG reduced-scale decoding.

    With ``draft_size`` the returned image may be smaller than the original;
    use :func:`image_size` for the original size.
    """
    path = Path(path)
    with _open(path, max_pixels) as img:
        decoded = _to_8bit(_decode(img, path, draft_size))
        return decoded.convert("RGB") if decoded.mode != "RGB" else decoded.copy()


def resize_input(image: Image.Image, size: int) -> np.ndarray:
    """uint8 ``(size, size, 3)`` model input from a decoded RGB image: the one resize used everywhere."""
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def model_input(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 ``(size, size, 3)`` model input from an image file (decoded at reduced JPEG scale where possible,
    then :func:`resize_input`)."""
    return resize_input(load_image(path, max_pixels, draft_size=size), size)


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Original ``(width, height)`` after EXIF orientation, read from the header only."""
    path = Path(path)
    with _open(path, max_pixels) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


@dataclass
class LoadedMask:
    """A binary lesion mask, ``mask`` bool ``(H, W)``, its lesion pixel count, and the repairs applied."""

    mask: np.ndarray
    lesion_pixels: int
    notes: list[str] = field(default_factory=list)


def load_mask(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedMask:
    """Binary lesion mask from a PNG (or any PIL-readable) file: RGB and palette masks by their brightest channel;
    a 0/1 mask, or one of 0 and one other level, counts that level as lesion; otherwise pixels > 127 (the ISIC
    scorer's threshold). The repairs are listed in ``notes``.
    """
    path = Path(path)
    with _open(path, max_pixels) as img:
        img = _to_8bit(_decode(img, path))
        notes = []
        if img.mode not in ("L", "1"):
            notes.append(f"converted_{img.mode}")
        if img.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            # The brightest channel, not luminance: a pure red or blue lesion (a palette mask's
            # colour) would otherwise fall below the threshold.
            img = Image.fromarray(np.asarray(img.convert("RGB")).max(axis=2), mode="L")
        elif img.mode != "L":
            img = img.convert("L")
        histogram = img.histogram()  # computed in C: far cheaper than numpy on a 12 Mpx mask
        values = np.asarray(img)
    present = [value for value, count in enumerate(histogram) if count]
    if present and present[-1] == 1:
        notes.append("zero_one")
        return LoadedMask(values == 1, histogram[1], notes)
    if len(present) == 2 and present[0] == 0 and present[1] != 255:
        # Two levels, one of them 0 (e.g. a dark palette colour): the other level is the lesion.
        notes.append("two_level")
        return LoadedMask(values == present[1], histogram[present[1]], notes)
    if any(value not in (0, 255) for value in present):
        notes.append("thresholded")
    return LoadedMask(values >= 128, sum(histogram[128:]), notes)
