"""Paired comparison of two models scored on the same images; and one model on two image sets.

Two models' per-image scores on one set of images are paired (image difficulty varies far more than the models
do): :func:`paired_difference` gives the mean difference with a 95% BCa bootstrap interval (resampling images)
and a two-sided Wilcoxon signed-rank p. One model on two sets (the test split and an external set) gives
independent samples: :func:`independent_difference` resamples each set on its own and tests with Mann-Whitney U.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

_CONFIDENCE = 0.95
_RESAMPLES = 9999


@dataclass(frozen=True)
class PairedComparison:
    """``delta`` = mean(b - a); ``ci95`` its confidence interval; ``p_value`` of no difference."""

    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci95: tuple[float, float]
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out


def _mean_difference(a, b, axis=-1):
    return np.mean(b - a, axis=axis)


def bootstrap_interval(
    samples: tuple,
    statistic,
    paired: bool = True,
    method: str = "BCa",
    confidence: float = _CONFIDENCE,
    resamples: int = _RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The bootstrap interval (``scipy.stats.bootstrap``, vectorised ``statistic``) of ``statistic(*samples)``,
    resampling images (the samples' rows together when ``paired``)."""
    result = stats.bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=resamples,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(a, b, confidence: float = _CONFIDENCE, resamples: int = _RESAMPLES, seed: int = 0):
    """Compare per-image scores ``a`` and ``b`` (same images, same order; 1-D, equal length).

    Returns a :class:`PairedComparison`. Identical scores give ``delta`` 0,
    interval ``(0, 0)`` and p-value 1.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores must be 1-D and of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 images, got {len(a)}")
    diff = b - a
    delta = float(diff.mean())
    if np.ptp(diff) <= 1e-12:  # no spread: nothing to resample, the interval is the point
        ci = (delta, delta)
    else:
        ci = bootstrap_interval((a, b), _mean_difference, True, "BCa", confidence, resamples, seed)
    # The signed-rank test drops zero differences; with nothing left there is no evidence of a change.
    p_value = float(stats.wilcoxon(b, a).pvalue) if np.any(diff != 0) else 1.0
    return PairedComparison(len(a), float(a.mean()), float(b.mean()), delta, ci, p_value)


def format_change(comparison: PairedComparison | IndependentComparison, digits: int = 4) -> str:
    """``+0.0123 [+0.0050, +0.0190]``: the mean change and its interval, for tables."""
    low, high = comparison.ci95
    return f"{comparison.delta:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


@dataclass(frozen=True)
class IndependentComparison:
    """``delta`` = mean(b) - mean(a) of two independent samples; ``ci95`` its interval; Mann-Whitney ``p_value``."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    delta: float
    ci95: tuple[float, float]
    p_value: float

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out


def _difference_of_means(a, b, axis=-1):
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def independent_difference(a, b, confidence: float = _CONFIDENCE, resamples: int = _RESAMPLES, seed: int = 0):
    """Compare per-image scores ``a`` and ``b`` of two different image sets (1-D, any lengths >= 2).

    E.g. a model's test-split scores (``a``) and its scores on another
    clinic's images (``b``): ``delta`` < 0 is the drop.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"two 1-D samples of at least 2 scores each are needed, got {a.shape} and {b.shape}")
    delta = float(b.mean() - a.mean())
    if np.ptp(np.concatenate([a, b])) <= 1e-12:
        ci, p_value = (delta, delta), 1.0
    else:
        ci = bootstrap_interval((a, b), _difference_of_means, False, "BCa", confidence, resamples, seed)
        p_value = float(stats.mannwhitneyu(a, b).pvalue)
    return IndependentComparison(len(a), len(b), float(a.mean()), float(b.mean()), delta, ci, p_value)


def mean_interval(scores, confidence: float = _CONFIDENCE, resamples: int = _RESAMPLES, seed: int = 0):
    """The mean of per-image ``scores`` (1-D, at least 2) and its BCa bootstrap interval, resampling images
    (``scipy.stats.bootstrap``): ``(mean, (low, high))``. Identical scores give the point as the interval."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError(f"an interval of a mean needs 1-D scores of at least 2 images, got shape {scores.shape}")
    mean = float(scores.mean())
    if np.ptp(scores) <= 1e-12:
        return mean, (mean, mean)
    return mean, bootstrap_interval((scores,), np.mean, True, "BCa", confidence, resamples, seed)
