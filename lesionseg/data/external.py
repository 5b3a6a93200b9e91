"""Labelled image folders as users have them: find, pair and prepare an external test set.

A folder holds ``images/`` + ``masks/`` sub-folders, or masks beside the images (tried in this order), or
:class:`ExternalSet` names both folders; a mask is its image's stem plus a suffix (``mask_suffix`` where several
fit). Unpaired files are listed in :attr:`ExternalPairing.skipped`; a set with no usable pair, or a mask of
another size than its image, raises :class:`~lesionseg.errors.DataError`. Layouts, names and mask formats:
docs/other-clinics.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lesionseg.data.images import DEFAULT_MAX_PIXELS
from lesionseg.data.isic import Pairing
from lesionseg.errors import DataError, SizeMismatchError

if TYPE_CHECKING:  # torch is imported only where a set is decoded: listing folders needs none of it
    from lesionseg.data.cache import Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg")
MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_mask", "_lesion")
_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_NAMES = ("test", "val", "train")


@dataclass(frozen=True)
class ExternalSet:
    """A labelled folder to score models on.

    ``name``: letters, digits and ``_`` (it names metrics and files).
    ``images``: the folder (with ``images/`` + ``masks/`` inside, or masks
    beside the images) or the images folder when ``masks`` is given.
    ``mask_suffix``: the suffix after the image stem in mask names, when
    several candidates fit (``""`` = the same stem, in a separate folder).
    """

    name: str
    images: Path
    masks: Path | None = None
    mask_suffix: str | None = None

    def __post_init__(self):
        if not _SET_NAME.match(self.name) or self.name in _RESERVED_NAMES:
            raise ValueError(
                f"external set name {self.name!r} must start with a letter and hold only letters, digits and _ "
                f"(and not be one of {_RESERVED_NAMES})"
            )


@dataclass
class ExternalPairing(Pairing):
    """:class:`~lesionseg.data.isic.Pairing` of an external set, with what was skipped and why."""

    skipped: list[str] = field(default_factory=list)


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    )


def _layout(spec: ExternalSet) -> tuple[Path, Path]:
    """The images and masks folders of ``spec`` (the same folder when masks lie beside the images)."""
    root = Path(spec.images)
    if not root.is_dir():
        raise DataError(root, f"external set {spec.name!r}: folder not found")
    if spec.masks is not None:
        if not Path(spec.masks).is_dir():
            raise DataError(spec.masks, f"external set {spec.name!r}: masks folder not found")
        return root, Path(spec.masks)
    subfolders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "images" in subfolders and "masks" in subfolders:
        return subfolders["images"], subfolders["masks"]
    return root, root


def _mask_index(masks: list[Path]) -> dict[str, list[Path]]:
    by_stem: dict[str, list[Path]] = {}
    for path in masks:
        by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def _pair_external(spec: ExternalSet) -> ExternalPairing:
    """Pair ``spec``'s images with their masks; see the module doc for the rules."""
    image_dir, mask_dir = _layout(spec)
    beside = image_dir == mask_dir
    suffixes = (spec.mask_suffix,) if spec.mask_suffix is not None else MASK_SUFFIXES + (("",) if not beside else ())
    mask_files = _files(mask_dir, _MASK_EXTENSIONS)
    by_stem = _mask_index(mask_files)
    mask_like = {p for p in mask_files if any(p.stem.endswith(s) for s in MASK_SUFFIXES if s)}
    if spec.mask_suffix:
        mask_like |= {p for p in mask_files if p.stem.endswith(spec.mask_suffix)}
    # Beside the images, a file named like a mask is a mask, never an image.
    images = [p for p in _files(image_dir, IMAGE_EXTENSIONS) if not (beside and p in mask_like)]

    pairs, skipped, used, seen_ids = [], [], set(), {}
    for image in images:
        candidates = [m for s in suffixes for m in by_stem.get(image.stem + s, []) if m != image]
        if len(candidates) > 1:
            names = ", ".join(m.name for m in candidates)
            raise DataError(
                image,
                f"external set {spec.name!r}: more than one mask fits this image ({names}); "
                "set mask_suffix to say which",
            )
        if not candidates:
            skipped.append(f"{image.name}: no mask")
            continue
        if image.stem in seen_ids:
            raise DataError(image, f"external set {spec.name!r}: duplicate image name (also {seen_ids[image.stem]})")
        seen_ids[image.stem] = image.name
        pairs.append((image.stem, image, candidates[0]))
        used.add(candidates[0])
    image_set = set(images)
    for mask in mask_files:
        if mask in used or mask in image_set:
            continue
        skipped.append(f"{mask.name}: no image" if mask in mask_like or not beside else f"{mask.name}: not paired")
    if not pairs:
        raise DataError(
            image_dir,
            f"external set {spec.name!r}: no image/mask pairs found ({len(images)} images, {len(mask_files)} "
            f"candidate masks; masks are <image stem>{{{', '.join(s or '(none)' for s in suffixes)}}}.png and so on)",
        )
    return ExternalPairing(sorted(pairs), [], skipped)


def prepare_external(
    spec: ExternalSet, size: int, workers: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Split, ExternalPairing]:
    """Decode and resize ``spec``'s pairs exactly like the test split (:func:`lesionseg.data.prepare.decode_pair`).

    A pair with an unreadable file is skipped and listed; a mask whose size
    differs from its image's, or a set left with no pair, raises
    :class:`DataError` naming the set and the file.
    """
    from lesionseg.data.cache import Split
    from lesionseg.data.prepare import decode_pair, decoding_pool

    pairing = _pair_external(spec)
    with decoding_pool(workers) as pool:
        if pool is None:
            outcomes = [_try_decode(decode_pair, image, mask, size, max_pixels) for _, image, mask in pairing.pairs]
        else:
            futures = [pool.submit(_try_decode, decode_pair, i, m, size, max_pixels) for _, i, m in pairing.pairs]
            outcomes = [f.result() for f in futures]
    decoded, kept = [], []
    for pair, outcome in zip(pairing.pairs, outcomes):
        if isinstance(outcome, SizeMismatchError):
            raise DataError(outcome.path, f"external set {spec.name!r}: {outcome.problem}")
        if isinstance(outcome, DataError):
            pairing.skipped.append(f"{Path(outcome.path).name}: {outcome.problem}")
        else:
            decoded.append(outcome)
            kept.append(pair)
    if not kept:
        raise DataError(Path(spec.images), f"external set {spec.name!r}: no readable image/mask pair")
    pairing.pairs = kept
    split = Split.from_arrays(
        np.stack([d.image for d in decoded]),
        np.stack([d.mask for d in decoded]),
        [name for name, _, _ in kept],
        [d.orig_size for d in decoded],
        [d.fullres_mask for d in decoded],
    )
    return split, pairing


def _try_decode(decode, image, mask, size, max_pixels):
    """The decoded pair, or the DataError that stopped it (returned, so one bad file stops no other)."""
    try:
        return decode(image, mask, size, max_pixels)
    except DataError as exc:
        return exc
