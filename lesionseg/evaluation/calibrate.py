"""Calibration to a clinic's annotation style: the probability threshold that fits a few of its own labelled masks.

:func:`calibrate` scores a grid of thresholds on the images (same inference and IoU as evaluation) and adopts the
best one only when its leave-one-out gain over the stored threshold has a 95% interval above 0; the review
threshold moves with it. :func:`calibrated_external` is the pipeline's form: a seeded draw of an external set's
images calibrates, the others are scored as trained and as calibrated. The rule and its limits:
docs/other-clinics.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesionseg import __version__
from lesionseg.data.cache import Split
from lesionseg.evaluation.evaluate import CALIBRATED_SUFFIX, EXTERNAL_KEY, TEST_TABLE, add_review, evaluate_model
from lesionseg.evaluation.review import IOU_COLUMN, QUALITY_COLUMN, review_threshold
from lesionseg.evaluation.stats import PairedComparison, paired_difference
from lesionseg.inference.exported import with_settings
from lesionseg.inference.predict import mask_from_logits, predict
from lesionseg.inference.quality import needs_review
from lesionseg.inference.settings import InferenceSettings
from lesionseg.metrics import confusion_counts, per_image_scores

# Probability thresholds searched: 0.05 to 0.95 in steps of 0.01 (the stored threshold is added if not on it).
_THRESHOLD_GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))
MIN_IMAGES = 3  # leave-one-out needs at least two images to choose on


@dataclass(frozen=True)
class ThresholdSearch:
    """Per-image IoU at original resolution ``iou`` ``(N, T)`` for each of ``thresholds`` ``(T,)``, with the
    model's TTA, zoom and clean-up; ``stored``: the column of the stored threshold; ``quality`` ``(N,)``: each
    mask's quality at the stored threshold."""

    ids: list[str]
    thresholds: np.ndarray
    iou: np.ndarray
    stored: int
    quality: np.ndarray


def search_grid(stored: float, grid=_THRESHOLD_GRID) -> np.ndarray:
    """The thresholds searched: ``grid`` and ``stored``, sorted, without repeats."""
    return np.unique(np.round(np.append(np.asarray(grid, dtype=float), stored), 6))


def threshold_ious(logits: torch.Tensor, truths, settings: InferenceSettings, thresholds) -> np.ndarray:
    """Per-image IoU ``(len(truths), T)`` of one image's mask from ``logits`` ``(H, W)`` with ``settings`` at each
    of ``thresholds`` in place of its own, against each of ``truths`` (bool ``(H, W)`` tensors: its masks as
    drawn, or as another annotator would)."""
    rows = [[] for _ in truths]
    for threshold in thresholds:
        pred = mask_from_logits(logits, replace(settings, threshold=float(threshold)))[None]
        for row, truth in zip(rows, truths):
            row.append(confusion_counts(pred, truth[None]))
    return np.stack([per_image_scores(torch.cat(row))["jaccard"].numpy() for row in rows])


def threshold_search(
    model: torch.nn.Module,
    split: Split,
    settings: InferenceSettings,
    grid=_THRESHOLD_GRID,
    batch_size: int = 32,
    device=None,
) -> ThresholdSearch:
    """Run the model once over ``split`` with ``settings`` (:func:`~lesionseg.inference.predict.predict`: flip TTA,
    the zoom-in second pass at the stored threshold) and score every threshold of :func:`search_grid` at each
    image's original resolution after ``settings``' clean-up (the logits composed one image at a time: a folder
    of large photographs need not fit in memory)."""
    thresholds = search_grid(settings.threshold, grid)
    prediction = predict(model, split.images, settings, batch_size, device)
    iou = np.stack(
        [
            threshold_ious(
                prediction.logits(i, int(h), int(w)), [torch.from_numpy(split.fullres_mask(i))], settings, thresholds
            )[0]
            for i, (h, w) in enumerate(split.orig_sizes)
        ]
    )
    stored = int(np.flatnonzero(np.isclose(thresholds, settings.threshold))[0])
    return ThresholdSearch(list(split.ids), thresholds, iou, stored, prediction.quality)


def _best_column(iou: np.ndarray, stored: int) -> int:
    """The column (threshold) of ``iou`` ``(N, T)`` with the highest mean; of equal means, the one nearest
    ``stored`` (no move without a reason)."""
    means = iou.mean(0)
    tied = np.flatnonzero(means >= means.max() - 1e-12)
    return int(tied[np.argmin(np.abs(tied - stored))])


def _leave_one_out(iou: np.ndarray, stored: int) -> np.ndarray:
    """Each image's IoU ``(N,)`` at the threshold :func:`_best_column` chooses on the other images."""
    everyone = np.arange(len(iou))
    return np.array([iou[i, _best_column(iou[everyone != i], stored)] for i in everyone])


@dataclass(frozen=True)
class Choice:
    """The ``best`` column of a search, the ``held_out`` gain (leave-one-out) over the ``stored`` one, and
    whether it is ``adopted``: a move whose held-out gain's paired 95% interval lies above 0."""

    best: int
    held_out: PairedComparison
    adopted: bool


def choose_threshold(iou: np.ndarray, stored: int) -> Choice:
    """The calibration rule on per-image IoU ``iou`` ``(N, T)`` (columns: thresholds; ``stored``: the stored
    one's, N >= 3): the column of the highest mean IoU (of equal means, the nearest to ``stored``), adopted when
    the paired interval of each image's IoU at the column chosen on the other images, against ``stored``, lies
    above 0."""
    best = _best_column(iou, stored)
    held_out = paired_difference(iou[:, stored], _leave_one_out(iou, stored))
    return Choice(best, held_out, best != stored and held_out.ci95[0] > 0)


def _moved_review_threshold(quality_before, quality_after, before: float | None) -> float | None:
    """The review threshold for masks of quality ``quality_after`` (at the new threshold) that flags the share
    of masks that ``before`` flags of ``quality_before`` (the same images at the stored threshold); ``None``
    stays ``None``; when every mask was flagged, 1 (every mask short of perfect quality)."""
    if before is None:
        return None
    share = float(needs_review(quality_before, before).mean())
    return 1.0 if share >= 1.0 else review_threshold(quality_after, share)


@dataclass(frozen=True)
class Calibration:
    """The outcome: ``before`` (the stored settings), ``after`` (the settings to store: ``before`` unless
    ``adopted``), the ``best`` threshold on these images, per-image IoU at the stored and at the best
    threshold (``iou_before``, ``iou_best``), the ``in_sample`` gain (best against stored, on the images it was
    chosen on) and the ``held_out`` gain (leave-one-out) whose interval decides."""

    ids: list[str]
    before: InferenceSettings
    after: InferenceSettings
    best: float
    adopted: bool
    iou_before: np.ndarray
    iou_best: np.ndarray
    in_sample: PairedComparison
    held_out: PairedComparison
    thresholds: np.ndarray

    def record(self, images: Path, masks: Path | None = None) -> dict:
        """The ``calibration`` entry stored with the calibrated model (and shown by its model card)."""

        def gain(comparison: PairedComparison) -> dict:
            return {"delta": comparison.delta, "ci95": list(comparison.ci95), "p_value": comparison.p_value}

        return {
            "images": str(Path(images).resolve()),
            "masks": str(Path(masks).resolve()) if masks is not None else None,
            "n": len(self.ids),
            "ids": list(self.ids),
            "searched": {
                "threshold": [float(self.thresholds.min()), float(self.thresholds.max()), len(self.thresholds)]
            },
            "before": self.before.record(),
            "after": self.after.record(),
            "adopted": self.adopted,
            "best_threshold": self.best,
            "iou_before": float(self.iou_before.mean()),
            "iou_best": float(self.iou_best.mean()),
            "in_sample_gain": gain(self.in_sample),
            "held_out_gain": gain(self.held_out),
            "lesionseg_version": __version__,
        }


def calibrate(
    model: torch.nn.Module,
    split: Split,
    settings: InferenceSettings,
    grid=_THRESHOLD_GRID,
    batch_size: int = 32,
    device=None,
) -> Calibration:
    """Choose the threshold for ``split``'s annotation style (see the module doc); ``settings``: the model's
    stored inference settings, which stay unless the held-out gain's interval lies above 0."""
    if len(split) < MIN_IMAGES:
        raise ValueError(f"calibration needs at least {MIN_IMAGES} labelled images, got {len(split)}")
    search = threshold_search(model, split, settings, grid, batch_size, device)
    choice = choose_threshold(search.iou, search.stored)
    iou_before = search.iou[:, search.stored]
    candidate = replace(settings, threshold=float(search.thresholds[choice.best]))
    if choice.best == search.stored:
        iou_best, quality_best = iou_before, search.quality
    else:  # the real evaluation of the candidate settings (with the zoom on, its crops follow the threshold)
        _, table = evaluate_model(model, split, candidate, batch_size, device)
        iou_best, quality_best = table[IOU_COLUMN].to_numpy(), table[QUALITY_COLUMN].to_numpy()
    after = settings
    if choice.adopted:
        review = _moved_review_threshold(search.quality, quality_best, settings.review_threshold)
        after = replace(candidate, review_threshold=review)
    return Calibration(
        search.ids,
        settings,
        after,
        candidate.threshold,
        choice.adopted,
        iou_before,
        iou_best,
        paired_difference(iou_before, iou_best),
        choice.held_out,
        search.thresholds,
    )


def calibrated_model(checkpoint: dict, calibration: Calibration, images: Path, masks: Path | None = None) -> dict:
    """``checkpoint`` (a model's dict, an exported ensemble too) with the settings ``calibration`` chose stored
    as its ``inference`` (what ``predict``, ``evaluate``, the pyfunc and the ONNX export read) and the
    ``calibration`` record; the weights are the same."""
    return {**with_settings(checkpoint, calibration.after), "calibration": calibration.record(images, masks)}


@dataclass(frozen=True)
class CalibrationDraw:
    """How many of an external set's ``images`` calibrate, drawn at random with ``seed``; the rest are scored."""

    images: int
    seed: int = 0

    def __post_init__(self):
        if self.images < MIN_IMAGES:
            raise ValueError(f"images must be at least {MIN_IMAGES} (calibration's minimum), got {self.images!r}")


def _draw_calibration(split: Split, draw: CalibrationDraw) -> tuple[Split, Split]:
    """``(calibration images, held-out images)`` of ``split``: ``draw.images`` drawn with ``draw.seed``, the
    rest; each part in ``split``'s order. At least one image must be left to score."""
    if draw.images >= len(split):
        raise ValueError(f"{draw.images} calibration images leave none to score of the set's {len(split)}")
    chosen = np.random.default_rng(draw.seed).permutation(len(split))[: draw.images]
    calibration = np.isin(np.arange(len(split)), chosen)
    return split.subset(np.flatnonzero(calibration)), split.subset(np.flatnonzero(~calibration))


def calibrated_external(
    model: torch.nn.Module,
    name: str,
    split: Split,
    draw: CalibrationDraw,
    settings: InferenceSettings,
    batch_size: int = 32,
    device=None,
) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """External set ``name`` scored as trained and as calibrated on a few of its own images: :func:`calibrate`
    on ``draw.images`` of them drawn with ``draw.seed``, from the model's ``settings``, then the held-out images alone
    scored with ``settings`` (under ``name``) and with the calibrated settings (under ``name`` +
    :data:`~lesionseg.evaluation.evaluate.CALIBRATED_SUFFIX`), each with its review metrics at its own review
    threshold. Returns ``(metrics, per-image tables)`` keyed by those two names, as
    :func:`~lesionseg.evaluation.evaluate.evaluate_external` returns them (``n``: held-out images); the
    calibrated entry also holds ``calibration_images``, the ``threshold`` used and whether calibration
    ``adopted`` it (1; 0: the guard kept the stored settings)."""
    calibration_part, held_out = _draw_calibration(split, draw)
    calibration = calibrate(model, calibration_part, settings, batch_size=batch_size, device=device)
    facts = {
        name: {},
        name + CALIBRATED_SUFFIX: {
            "calibration_images": len(calibration_part),
            "threshold": calibration.after.threshold,
            "adopted": int(calibration.adopted),
        },
    }
    metrics, tables = {}, {}
    for key, used in zip(facts, (settings, calibration.after)):
        scores, table = evaluate_model(model, held_out, used, batch_size, device)
        add_review(scores, {TEST_TABLE: table}, used.review_threshold)
        metrics[key], tables[key] = {"n": len(held_out), **facts[key], **scores}, table
    return metrics, tables


def score_calibrated_sets(
    model: torch.nn.Module,
    metrics: dict,
    tables: dict[str, pd.DataFrame],
    external: dict[str, Split],
    draws: dict[str, CalibrationDraw],
    settings: InferenceSettings,
    batch_size: int = 32,
    device=None,
) -> None:
    """In place, for a model's ``metrics`` and per-image ``tables`` (as
    :func:`~lesionseg.evaluation.evaluate.evaluate_checkpoint` returns them): each external set that ``draws``
    names (set -> its draw) scored on its held-out images as trained and as calibrated
    (:func:`calibrated_external`, from the model's ``settings``), the entries of ``metrics[EXTERNAL_KEY]`` in
    the order of ``external`` (every external set, name -> split), each set's calibrated entry after its own."""
    scored = dict(metrics.get(EXTERNAL_KEY, {}))
    for name, draw in draws.items():
        set_metrics, set_tables = calibrated_external(model, name, external[name], draw, settings, batch_size, device)
        scored.update(set_metrics)
        tables.update(set_tables)
    if scored:
        order = [key for name in external for key in (name, name + CALIBRATED_SUFFIX)]
        metrics[EXTERNAL_KEY] = {key: scored[key] for key in order if key in scored}
