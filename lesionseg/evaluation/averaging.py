"""One model's IoU and Dice under each way of averaging them over a test set, from per-image pixel counts.

A published IoU that does not say how it was averaged can only be compared once the averaging is known;
each candidate here is computed on the same predictions, so the differences are the averaging alone.
``counts`` is an ``(N, 4)`` array of per-image TP, FP, FN, TN (:data:`lesionseg.metrics.COUNT_NAMES`), in
the order the test loader gives the images (the per-image table's order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionseg.evaluation.evaluate import ORIGINAL_PREFIX
from lesionseg.evaluation.stats import bootstrap_interval
from lesionseg.metrics import COUNT_NAMES

_BATCH_SIZE = 16  # the reference report's batch size


@dataclass(frozen=True)
class _Averaging:
    """A way to average: its table label, the resolution it is computed at, how it reduces the counts."""

    label: str
    resolution: str  # "original" (each image's own size) or "input" (the model's, 128 px)
    unit: str  # what the bootstrap resamples: "image" or "batch"
    reduce: str  # "mean" of per-unit scores (weighted by unit size), "pooled" counts, "two_class" mean,
    # "mixed": the two-class IoU with the lesion's Dice (a multi-class IoU metric beside a binary Dice)


AVERAGINGS = {
    "per_image": _Averaging("per-image mean, original size (official)", "original", "image", "mean"),
    "per_image_input": _Averaging("per-image mean, 128 px", "input", "image", "mean"),
    "pooled": _Averaging("pixels pooled over the test set, 128 px", "input", "image", "pooled"),
    "batch16": _Averaging(f"per batch of {_BATCH_SIZE}, mean over batches, 128 px", "input", "batch", "mean"),
    "two_class": _Averaging("mean of lesion and background, pooled, 128 px", "input", "image", "two_class"),
    "mixed": _Averaging("IoU of lesion and background, Dice of the lesion, pooled, 128 px", "input", "image", "mixed"),
}


def _ratio(num, den):
    """num / den, 1.0 where den == 0 (nothing to get wrong), as :mod:`lesionseg.metrics` defines it."""
    return np.where(den > 0, num / np.maximum(den, 1), 1.0)


def _iou_dice(tp, fp, fn):
    return _ratio(tp, tp + fp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def _statistic(reduce: str):
    """``f(tp, fp, fn, tn, size, axis) -> (iou, dice)`` over units along ``axis`` (vectorised for the bootstrap)."""

    def mean(tp, fp, fn, tn, size, axis=-1):
        return tuple(np.sum(s * size, axis=axis) / np.sum(size, axis=axis) for s in _iou_dice(tp, fp, fn))

    def pooled(tp, fp, fn, tn, size, axis=-1):
        return _iou_dice(*(np.sum(c, axis=axis) for c in (tp, fp, fn)))

    def two_class(tp, fp, fn, tn, size, axis=-1):
        lesion = pooled(tp, fp, fn, tn, size, axis)
        background = pooled(tn, fn, fp, tp, size, axis)  # background's TP is TN, its FP the lesion's FN
        return tuple((a + b) / 2 for a, b in zip(lesion, background))

    def mixed(tp, fp, fn, tn, size, axis=-1):
        return two_class(tp, fp, fn, tn, size, axis)[0], pooled(tp, fp, fn, tn, size, axis)[1]

    return {"mean": mean, "pooled": pooled, "two_class": two_class, "mixed": mixed}[reduce]


def _units(counts: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Counts per resampling unit (``(U, 4)``) and how many images each holds."""
    if unit == "image":
        return counts, np.ones(len(counts))
    starts = np.arange(0, len(counts), _BATCH_SIZE)
    return np.add.reduceat(counts, starts, axis=0), np.diff(np.append(starts, len(counts)))


@dataclass(frozen=True)
class AveragedScores:
    """IoU and Dice under one averaging, each with its 95% bootstrap interval."""

    iou: float
    iou_ci95: tuple[float, float]
    dice: float
    dice_ci95: tuple[float, float]


def averaged_scores(counts, averaging: str, seed: int = 0) -> AveragedScores:
    """IoU and Dice of ``counts`` (``(N, 4)``, N >= 2) under ``averaging`` (a key of :data:`AVERAGINGS`), with
    percentile bootstrap intervals resampling images (batches, for a per-batch averaging; ``scipy.stats``)."""
    how = AVERAGINGS[averaging]
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != 4 or len(counts) < 2:
        raise ValueError(f"expected (N, 4) per-image counts with N >= 2, got shape {counts.shape}")
    units, size = _units(counts, how.unit)
    statistic = _statistic(how.reduce)
    point = statistic(*units.T, size)
    intervals = [
        bootstrap_interval(
            (*units.T, size),
            lambda *columns, axis=-1, which=which: statistic(*columns, axis=axis)[which],
            method="percentile",
            seed=seed,
        )
        for which in range(2)  # IoU, then Dice
    ]
    return AveragedScores(float(point[0]), intervals[0], float(point[1]), intervals[1])


def table_counts(table, resolution: str) -> np.ndarray:
    """A per-image table's ``(N, 4)`` counts at ``resolution``: "original" (``orig_tp`` ...) or "input" (``tp`` ...)."""
    prefix = {"original": ORIGINAL_PREFIX, "input": ""}[resolution]
    columns = [prefix + name for name in COUNT_NAMES]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"no pixel count column(s) {missing}: a record from before per-image tables kept counts")
    return table[columns].to_numpy()
