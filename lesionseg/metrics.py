"""Segmentation metrics as the ISIC challenge scorer defines them: pure tensor functions.

Everything starts from per-image confusion counts of the lesion class (:func:`confusion_counts`); scores are
computed per image (:func:`per_image_scores`), then averaged over images (:func:`summarize`: the macro mean, the
official ISIC 2016 ranking), so results do not depend on batch size. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import torch

__all__ = ["THRESHOLDED_JACCARD_CUTOFF", "COUNT_NAMES", "confusion_counts", "per_image_scores", "summarize"]

THRESHOLDED_JACCARD_CUTOFF = 0.65
COUNT_NAMES = ("tp", "fp", "fn", "tn")  # the columns of confusion_counts, in order


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image TP, FP, FN, TN.

    ``pred`` and ``target``: boolean (or 0/1) masks of shape ``(N, H, W)`` or
    ``(N, 1, H, W)``. Returns int64 ``(N, 4)`` with columns TP, FP, FN, TN.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.bool().flatten(1)
    target = target.bool().flatten(1)
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = (~pred & ~target).sum(1)
    return torch.stack([tp, fp, fn, tn], dim=1).long()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 1.0 where den == 0 (nothing to get wrong)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))


def per_image_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image scores, float64 ``(N,)`` each, from ``(N, 4)`` counts (TP, FP, FN, TN over pixels).

    - ``jaccard`` = TP / (TP + FP + FN); ``dice`` = 2 TP / (2 TP + FP + FN): 1.0 where both masks are empty
    - ``accuracy`` = (TP + TN) / all pixels
    - ``sensitivity`` = TP / (TP + FN), 1.0 where the truth has no lesion pixel;
      ``specificity`` = TN / (TN + FP), 1.0 where it has no background pixel
    """
    tp, fp, fn, tn = counts.double().unbind(1)
    return {
        "jaccard": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def summarize(counts: torch.Tensor) -> dict[str, float]:
    """Dataset metrics from per-image ``(N, 4)`` counts: the mean over images of every per-image score, plus
    ``jaccard_micro`` (sum TP / sum (TP + FP + FN) over all pixels of all images) and ``jaccard_thresholded`` (the
    mean per-image Jaccard with values below :data:`THRESHOLDED_JACCARD_CUTOFF` counted as 0: ISIC 2018's headline).
    """
    if counts.ndim != 2 or counts.shape[1] != 4 or counts.shape[0] == 0:
        raise ValueError(f"expected non-empty (N, 4) counts, got shape {tuple(counts.shape)}")
    scores = per_image_scores(counts)
    summary = {name: float(value.mean()) for name, value in scores.items()}
    tp, fp, fn, _ = counts.sum(0).double()
    summary["jaccard_micro"] = float(_ratio(tp, tp + fp + fn))
    jac = scores["jaccard"]
    summary["jaccard_thresholded"] = float(torch.where(jac >= THRESHOLDED_JACCARD_CUTOFF, jac, 0.0).mean())
    return summary
