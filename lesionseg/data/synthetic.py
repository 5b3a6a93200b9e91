"""Synthetic ISIC-style archives: photo-like JPEGs with elliptic lesions, packed like the official four.

For places that have no real dermoscopy at hand but must run the real pipeline end to end: the
GitHub workflow (``scripts/make_fixture_archives.py``) and the end-to-end benchmark. The lesion is
darker than the skin around it, so a model trained for an epoch or two already scores above chance
and a change to the pipeline shows up in the scores.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from lesionseg.data.isic import TEST_IMAGES, TEST_MASKS, TRAIN_IMAGES, TRAIN_MASKS

# Archive stem -> (split, masks?)
_CONTENTS = {
    TRAIN_IMAGES: ("train", False),
    TRAIN_MASKS: ("train", True),
    TEST_IMAGES: ("test", False),
    TEST_MASKS: ("test", True),
}
_TEST_ID_OFFSET = 100000
_ZIP_TIME = (2016, 1, 1, 0, 0, 0)  # test IDs never collide with training IDs, as in the official sets


def write_archives(out: Path, n_train: int, n_test: int, width: int = 600, height: int = 450) -> Path:
    """The four official archives with ``n_train`` + ``n_test`` image/mask pairs, in ``out`` (created).

    Deterministic: the same arguments give the same archives, so two runs of the pipeline see the same data.
    """
    if n_train < 1 or n_test < 1 or width < 16 or height < 16:
        raise ValueError(f"need at least 1 pair a split and 16x16 pixels, got {n_train}/{n_test}, {width}x{height}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    counts = {"train": n_train, "test": n_test}
    for name, (split, masks) in _CONTENTS.items():
        with zipfile.ZipFile(out / f"{name}.zip", "w", zipfile.ZIP_STORED) as archive:
            for i in range(counts[split]):
                number = i + (0 if split == "train" else _TEST_ID_OFFSET)
                isic_id = f"ISIC_{number:07d}"
                shape = np.random.default_rng(number)  # the same lesion for an image and its mask
                cy, cx, ry, rx = shape.uniform(0.35, 0.65, 2).tolist() + shape.uniform(0.15, 0.3, 2).tolist()
                lesion = ((yy / height - cy) / ry) ** 2 + ((xx / width - cx) / rx) ** 2 <= 1
                if masks:
                    image, member = Image.fromarray(lesion.astype(np.uint8) * 255), f"{isic_id}_Segmentation.png"
                else:
                    base = rng.integers(120, 230, (height // 16, width // 16, 3), dtype=np.uint8)
                    photo = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC)).copy()
                    photo[lesion] //= 2
                    image, member = Image.fromarray(photo), f"{isic_id}.jpg"
                data = io.BytesIO()
                image.save(data, format="JPEG" if member.endswith(".jpg") else "PNG", quality=90)
                # A fixed timestamp: the same arguments give byte-identical archives.
                archive.writestr(zipfile.ZipInfo(f"{name}/{member}", date_time=_ZIP_TIME), data.getvalue())
    return out
