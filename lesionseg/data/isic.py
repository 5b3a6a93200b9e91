"""The official ISIC 2016 Part 1 layout: find image/mask files and pair them by ID.

Images are ``ISIC_nnnnnnn.jpg``, masks ``ISIC_nnnnnnn_Segmentation.png``, in
any sub-folder of the extracted archive. ``__MACOSX/`` and hidden files are
skipped silently; any other file that fits neither pattern is ignored and
listed in :attr:`Pairing.ignored`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lesionseg.errors import DataError

# Folder names of the extracted official archives (one folder per archive).
TRAIN_IMAGES = "ISBI2016_ISIC_Part1_Training_Data"
TRAIN_MASKS = "ISBI2016_ISIC_Part1_Training_GroundTruth"
TEST_IMAGES = "ISBI2016_ISIC_Part1_Test_Data"
TEST_MASKS = "ISBI2016_ISIC_Part1_Test_GroundTruth"

_IMAGE_PATTERN = re.compile(r"^(ISIC_\d{7})\.(jpe?g|png)$", re.IGNORECASE)
_MASK_PATTERN = re.compile(r"^(ISIC_\d{7})_Segmentation\.png$", re.IGNORECASE)


@dataclass
class Pairing:
    """Pairs sorted by ID: ``(isic_id, image_path, mask_path)``; plus ignored files."""

    pairs: list[tuple[str, Path, Path]]
    ignored: list[str] = field(default_factory=list)


def _visible_files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__MACOSX" for part in rel.parts) or not path.is_file():
            continue
        yield path


def _index(root: Path, pattern: re.Pattern, other: re.Pattern, kind: str, ignored: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in _visible_files(root):
        match = pattern.match(path.name)
        if not match:
            if not other.match(path.name):
                ignored.append(str(path))
            continue
        isic_id = match.group(1).upper()
        if isic_id in found:
            raise DataError(path, f"duplicate {kind} for {isic_id} (also {found[isic_id]})")
        found[isic_id] = path
    return found


def pair_images_and_masks(image_dir: Path, mask_dir: Path) -> Pairing:
    """Pair every image in ``image_dir`` with its mask in ``mask_dir`` (searched recursively).

    Raises :class:`DataError` for duplicate IDs, an image without a mask, a
    mask without an image, or no pairs at all.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(folder, "folder not found")
    ignored: list[str] = []
    images = _index(image_dir, _IMAGE_PATTERN, _MASK_PATTERN, "image", ignored)
    masks = _index(mask_dir, _MASK_PATTERN, _IMAGE_PATTERN, "mask", ignored)
    if no_mask := sorted(images.keys() - masks.keys()):
        raise DataError(images[no_mask[0]], f"{len(no_mask)} image(s) without a mask in {mask_dir}: {no_mask[:5]}")
    if no_image := sorted(masks.keys() - images.keys()):
        raise DataError(masks[no_image[0]], f"{len(no_image)} mask(s) without an image in {image_dir}: {no_image[:5]}")
    if not images:
        raise DataError(image_dir, "no ISIC_nnnnnnn.jpg images found")
    pairs = [(i, images[i], masks[i]) for i in sorted(images)]
    return Pairing(pairs, ignored)
