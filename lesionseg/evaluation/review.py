"""Which masks a person should check: the review threshold and how well it works.

A mask is flagged when its quality (:func:`lesionseg.inference.quality.mask_quality`) is below the model's review
threshold: the quality quantile that flags ``evaluate.review_fraction`` of masks the model was not trained on
(validation split; out of fold for the cross-validation ensemble), never the test split. :func:`review_metrics`
says what it buys: failures (IoU < 0.7) caught, IoU of the accepted masks, share flagged. docs/predict.md.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

from lesionseg.inference.quality import needs_review

_FAILURE_IOU = 0.7  # a mask with IoU below this is a failure a reviewer should catch
QUALITY_COLUMN = "quality"
REVIEW_COLUMN = "review"
IOU_COLUMN = "orig_jaccard"  # the per-image IoU at original resolution (the ISIC definition)
_REVIEW_PREFIX = "review_"


def review_threshold(quality, fraction: float) -> float:
    """The quality below which ``fraction`` of ``quality`` (one value per mask) lies: flagging
    ``quality < threshold`` (:func:`needs_review`) flags that share of these masks (ties aside)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"review fraction must be in [0, 1), got {fraction!r}")
    quality = np.asarray(quality, dtype=float)
    if quality.size == 0:
        raise ValueError("no quality scores to choose a review threshold on")
    return float(np.quantile(quality, fraction))


def _failure_auroc(quality, iou, failure_iou: float = _FAILURE_IOU) -> float:
    """AUROC of low quality for telling failures (``iou < failure_iou``) from the rest: the probability that a
    random failure scores lower quality than a random success (ties count half), i.e. the Mann-Whitney
    ``U / (n_success * n_failure)``. NaN when either group is empty."""
    quality, iou = np.asarray(quality, dtype=float), np.asarray(iou, dtype=float)
    failed = iou < failure_iou
    if failed.all() or not failed.any():
        return float("nan")
    u = mannwhitneyu(quality[~failed], quality[failed], alternative="two-sided").statistic
    return float(u / (failed.sum() * (~failed).sum()))


def review_metrics(quality, iou, threshold: float | None, failure_iou: float = _FAILURE_IOU) -> dict[str, float]:
    """``review_auroc`` (how well quality ranks failures, IoU < ``failure_iou``, below the rest), ``review_caught``
    (share of failures flagged), ``review_accepted_jaccard`` (mean IoU of the masks not flagged), ``review_flagged``
    (share flagged) for one split; without a threshold only the AUROC. A metric the split leaves undefined (no
    failure, no success, every mask flagged) is left out: metrics.json holds numbers only.
    """
    quality, iou = np.asarray(quality, dtype=float), np.asarray(iou, dtype=float)
    metrics = {"auroc": _failure_auroc(quality, iou, failure_iou)}
    if threshold is not None:
        flagged, failed = needs_review(quality, threshold), iou < failure_iou
        metrics["caught"] = float(flagged[failed].mean()) if failed.any() else float("nan")
        metrics["accepted_jaccard"] = float(iou[~flagged].mean()) if (~flagged).any() else float("nan")
        metrics["flagged"] = float(flagged.mean()) if flagged.size else float("nan")
    return {_REVIEW_PREFIX + k: v for k, v in metrics.items() if not np.isnan(v)}


def risk_coverage(quality, iou) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: for every share of masks reviewed (least quality first), 0 to all but one,
    the mean IoU of the masks accepted. Returns ``(share reviewed, accepted mean IoU)``, each ``(N,)``."""
    quality, iou = np.asarray(quality, dtype=float), np.asarray(iou, dtype=float)
    n = len(iou)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    accepted = iou[np.argsort(-quality, kind="stable")]  # best quality first
    means = np.cumsum(accepted)[::-1] / np.arange(n, 0, -1)  # reviewing k least: mean of the first n - k
    return np.arange(n) / n, means
