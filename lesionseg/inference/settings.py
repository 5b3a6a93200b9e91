"""The inference settings: how a trained model's logits become a mask, in one frozen object (no torch imported).

:class:`InferenceSettings` holds flip TTA, the probability ``threshold``, the clean-up (:class:`PostprocessConfig`),
the zoom-in second pass (:class:`ZoomConfig`) and the review threshold; its defaults are the plain model. Every
path from a model to masks takes one, and :func:`lesionseg.inference.predict.predict` applies it. Its stored form
(:meth:`InferenceSettings.record`) is what exported models, ONNX metadata and model cards hold; :data:`OVERRIDABLE`
names what ``lesionseg predict``/``evaluate`` flags and the pyfunc's params may change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["logit", "PostprocessConfig", "ZoomConfig", "OVERRIDABLE", "InferenceSettings"]


def logit(probability: float) -> float:
    """The logit at which a probability threshold cuts: 0 for 0.5."""
    return math.log(probability / (1 - probability))


@dataclass(frozen=True)
class PostprocessConfig:
    """The mask clean-up: ``keep_largest`` keeps only the largest 8-connected component; ``fill_holes`` fills
    background regions not connected to the border (:func:`lesionseg.inference.postprocess.clean_mask`)."""

    keep_largest: bool = False
    fill_holes: bool = False

    @property
    def active(self) -> bool:
        return self.keep_largest or self.fill_holes


@dataclass(frozen=True)
class ZoomConfig:
    """The zoom-in second pass (:mod:`lesionseg.inference.zoom`). ``enabled``: run it; ``margin``: widening of the
    predicted lesion's box on each side, as a share of the box's height (width); ``max_share``: only images
    whose widened box covers less than this share of the image get the second pass (a crop close to the
    whole image changes nothing)."""

    enabled: bool = False
    margin: float = 0.3
    max_share: float = 0.8

    def __post_init__(self):
        if self.margin < 0:
            raise ValueError(f"zoom margin must be >= 0, got {self.margin!r}")
        if not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"zoom max_share must be in (0, 1], got {self.max_share!r}")


# The stored form's keys, in its order, and the settings each is (see the module doc).
_RECORD_KEYS = ("tta", "threshold", "keep_largest", "fill_holes", "review_threshold", "zoom", "zoom_margin",
               "zoom_max_share")  # fmt: skip
# What a user may override per call: predict/evaluate/calibrate flags, the pyfunc's params.
OVERRIDABLE = ("tta", "threshold", "keep_largest", "fill_holes", "review_threshold", "zoom")


@dataclass(frozen=True)
class InferenceSettings:
    """How a model's logits become masks: ``tta`` (average the logits of the image and its three flips),
    ``threshold`` (the lesion probability above which a pixel is lesion), ``postprocess`` (clean-up of the
    thresholded mask), ``zoom`` (the second pass on small lesions) and ``review_threshold`` (masks whose
    quality, :func:`lesionseg.inference.quality.mask_quality`, is below it are flagged for review; ``None``, as for a
    training checkpoint: none is flagged)."""

    tta: bool = False
    threshold: float = 0.5
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    review_threshold: float | None = None

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError(f"review_threshold must be a quality in [0, 1], got {self.review_threshold!r}")

    @property
    def threshold_logit(self) -> float:
        """The logit a pixel's logit must exceed to be lesion (:func:`logit` of ``threshold``)."""
        return logit(self.threshold)

    def record(self) -> dict:
        """The stored form, one flat JSON-able dict: ``tta``, ``threshold``, ``keep_largest``, ``fill_holes``,
        ``review_threshold``, ``zoom``, ``zoom_margin``, ``zoom_max_share``.
        """
        return {
            "tta": self.tta,
            "threshold": self.threshold,
            "keep_largest": self.postprocess.keep_largest,
            "fill_holes": self.postprocess.fill_holes,
            "review_threshold": self.review_threshold,
            "zoom": self.zoom.enabled,
            "zoom_margin": self.zoom.margin,
            "zoom_max_share": self.zoom.max_share,
        }

    @classmethod
    def from_record(cls, record: dict) -> InferenceSettings:
        """Settings from their stored form (every key of :meth:`record`). Raises ``ValueError`` for a missing
        key, a key that is not a setting, or a bad value."""
        unknown = sorted(set(record) - set(_RECORD_KEYS))
        if unknown:
            raise ValueError(f"unknown inference settings: {', '.join(unknown)}")
        missing = [key for key in _RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"missing inference settings: {', '.join(missing)}")
        return cls(
            tta=record["tta"],
            threshold=record["threshold"],
            postprocess=PostprocessConfig(record["keep_largest"], record["fill_holes"]),
            zoom=ZoomConfig(record["zoom"], record["zoom_margin"], record["zoom_max_share"]),
            review_threshold=record["review_threshold"],
        )

    def override(self, overrides: dict) -> InferenceSettings:
        """These settings with ``overrides`` (names of :data:`OVERRIDABLE`; a ``None`` value: not given) applied;
        a name that cannot be overridden raises ``ValueError``."""
        given = {name: value for name, value in overrides.items() if value is not None}
        refused = sorted(set(given) - set(OVERRIDABLE))
        if refused:
            raise ValueError(f"cannot override {', '.join(refused)}: one of {', '.join(OVERRIDABLE)}")
        return InferenceSettings.from_record({**self.record(), **given}) if given else self
