"""Decode, validate and resize image/mask pairs once; cache them as tensors.

Output folder (written atomically as a whole): ``train.pt``, ``val.pt``,
``test.pt`` (see :mod:`lesionseg.data.cache`) and ``summary.json`` with counts of
images, pairs, ignored files and repairs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lesionseg import atomic
from lesionseg.data.cache import Split, encode_mask
from lesionseg.data.images import DEFAULT_MAX_PIXELS, image_size, load_mask, model_input
from lesionseg.data.isic import TEST_IMAGES, TEST_MASKS, TRAIN_IMAGES, TRAIN_MASKS, Pairing, pair_images_and_masks
from lesionseg.errors import DataError, SizeMismatchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """``size``: side of the square model input; ``val_fraction``: share of the
    training pairs held out for validation (seeded by ``seed``);
    ``expected_train``/``expected_test``: pair counts to insist on (None = any);
    ``workers``: decoding processes (0 = in this process)."""

    size: int = 128
    val_fraction: float = 0.1
    seed: int = 42
    expected_train: int | None = None
    expected_test: int | None = None
    workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"size must be an integer >= 32, got {self.size!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")


@dataclass
class DecodedPair:
    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray  # uint8 (S, S), 0/1
    orig_size: tuple[int, int]  # (height, width)
    fullres_mask: bytes
    notes: list[str]
    lesion_pixels: int


def decode_pair(image_path: Path, mask_path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedPair:
    """Decode one pair and resize both to ``size`` x ``size``.

    The image is decoded at reduced JPEG scale where possible and resized
    with antialiased bilinear filtering; the mask keeps full resolution for
    the original-size metrics and is resized with nearest neighbour.
    """
    width, height = image_size(image_path, max_pixels)
    loaded = load_mask(mask_path, max_pixels)
    if loaded.mask.shape != (height, width):
        mh, mw = loaded.mask.shape
        raise SizeMismatchError(
            mask_path, f"mask is {mw}x{mh} but its image {Path(image_path).name} is {width}x{height}"
        )
    image = model_input(image_path, size, max_pixels)
    small = Image.fromarray(loaded.mask.view(np.uint8)).resize((size, size), Image.NEAREST)
    return DecodedPair(
        image,
        np.asarray(small, dtype=np.uint8),
        (height, width),
        encode_mask(loaded.mask),
        loaded.notes,
        loaded.lesion_pixels,
    )


def _decode_job(job):
    return decode_pair(*job)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Worker initializer: the worker is killed (SIGKILL) when its parent process dies, however it dies.

    A decode worker waits on the pool's task pipe, whose write end it inherited (fork): a ``prepare`` (or
    ``external``) stage killed with SIGKILL, e.g. an interrupted ``dvc repro``, would otherwise leave its
    workers waiting forever. ``parent``: the pool owner's pid. Linux only (prctl); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent died before the line above, so nothing is left to signal this worker. Its orphans are
    # re-parented as the parent exits, before it is reaped, so getppid() sees the death even while the
    # dead parent is still a zombie (which os.kill(parent, 0) would report as alive).
    if os.getppid() != parent:
        os._exit(1)


def decoding_pool(workers: int):
    """A process pool for :func:`decode_pairs` whose workers die with this process, or a no-op context
    (``None``) for ``workers=0``."""
    if workers <= 0:
        return contextlib.nullcontext()
    return ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))


def decode_pairs(
    pairing: Pairing, size: int, pool: ProcessPoolExecutor | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Split, Counter]:
    """Decode all pairs (in ``pool`` if given) into a :class:`Split` and a repair counter."""
    jobs = [(image, mask, size, max_pixels) for _, image, mask in pairing.pairs]
    if pool is not None and len(jobs) > 1:
        # Chunks amortise inter-process overhead; small enough that workers finish together.
        decoded = list(pool.map(_decode_job, jobs, chunksize=max(1, min(16, len(jobs) // 32))))
    else:
        decoded = [_decode_job(job) for job in jobs]
    repairs = Counter(note for d in decoded for note in d.notes)
    repairs["empty_mask"] = sum(d.lesion_pixels == 0 for d in decoded)
    split = Split.from_arrays(
        np.stack([d.image for d in decoded]),
        np.stack([d.mask for d in decoded]),
        [isic_id for isic_id, _, _ in pairing.pairs],
        [d.orig_size for d in decoded],
        [d.fullres_mask for d in decoded],
    )
    return split, repairs


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of ``range(n)``; validation gets ``round(n * val_fraction)`` (at least 1)."""
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check_count(what: str, folder: Path, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise DataError(folder, f"expected {expected} {what} pairs, found {found}")


def prepare_dataset(raw_dir: Path, out_dir: Path, config: PrepareConfig) -> dict:
    """Build ``out_dir`` (train/val/test splits + summary) from the extracted archives in ``raw_dir``."""
    raw_dir = Path(raw_dir)
    train_pairs = pair_images_and_masks(raw_dir / TRAIN_IMAGES, raw_dir / TRAIN_MASKS)
    test_pairs = pair_images_and_masks(raw_dir / TEST_IMAGES, raw_dir / TEST_MASKS)
    _check_count("training", raw_dir / TRAIN_IMAGES, len(train_pairs.pairs), config.expected_train)
    _check_count("test", raw_dir / TEST_IMAGES, len(test_pairs.pairs), config.expected_test)

    with decoding_pool(config.workers) as pool:  # one pool for both splits: its start-up is paid once
        train_all, train_repairs = decode_pairs(train_pairs, config.size, pool, config.max_pixels)
        test, test_repairs = decode_pairs(test_pairs, config.size, pool, config.max_pixels)
    train_idx, val_idx = train_val_indices(len(train_all), config.val_fraction, config.seed)
    splits = {"train": train_all.subset(train_idx), "val": train_all.subset(val_idx), "test": test}

    ignored = train_pairs.ignored + test_pairs.ignored
    summary = {
        "size": config.size,
        "pairs": {name: len(split) for name, split in splits.items()},
        "training_pairs": len(train_all),
        "ignored_files": len(ignored),
        "ignored_examples": ignored[:20],
        "repairs": dict(sorted((train_repairs + test_repairs).items())),
    }
    with atomic.atomic_dir(out_dir) as tmp:
        for name, split in splits.items():
            split.save(tmp / f"{name}.pt")
        atomic.write_json(tmp / "summary.json", summary)
    log.info("prepared %s", summary)
    return summary
