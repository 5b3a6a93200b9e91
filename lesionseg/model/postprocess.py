"""Mask post-processing common in lesion segmentation (one lesion per image, no holes).

ISIC 2016 images show one lesion, so stray blobs of skin texture, hair or
ruler marks predicted as lesion are false positives, and a hole inside a
lesion is a false negative. Both clean-ups act on the thresholded mask at the
resolution it is scored at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # imported where used: clean_mask and the configs serve the torch-free ONNX reference too
    import torch

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def logit(probability: float) -> float:
    """The logit at which a probability threshold cuts: 0 for 0.5."""
    return math.log(probability / (1 - probability))


@dataclass(frozen=True)
class PostprocessConfig:
    """``keep_largest``: keep only the largest 8-connected component;
    ``fill_holes``: fill background regions not connected to the border."""

    keep_largest: bool = False
    fill_holes: bool = False

    @property
    def active(self) -> bool:
        return self.keep_largest or self.fill_holes


@dataclass(frozen=True)
class ZoomConfig:
    """The zoom-in second pass (:mod:`lesionseg.model.zoom`). ``enabled``: run it; ``margin``: widening of the
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


@dataclass(frozen=True)
class InferenceConfig:
    """How a trained model's logits become a mask: flip TTA, probability ``threshold``, clean-up.

    The defaults are the plain model (no TTA, threshold 0.5, no clean-up): the
    recipe (params.yaml's ``evaluate`` section) says what to apply, and the
    export stage stores the settings the model was evaluated with in the
    exported model, which ``lesionseg predict`` and the MLflow pyfunc use
    unless told otherwise.

    ``zoom``, ``zoom_margin``, ``zoom_max_share``: the zoom-in second pass (:class:`ZoomConfig`).

    ``review_threshold``: masks whose quality (:func:`lesionseg.model.quality.mask_quality`) is below it
    are flagged for review (:mod:`lesionseg.evaluation.review`); ``None`` (a model exported before the
    threshold existed, or a training checkpoint): none is flagged.
    """

    tta: bool = False
    threshold: float = 0.5
    keep_largest: bool = False
    fill_holes: bool = False
    review_threshold: float | None = None
    zoom: bool = False
    zoom_margin: float = 0.3
    zoom_max_share: float = 0.8

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError(f"review_threshold must be a quality in [0, 1], got {self.review_threshold!r}")
        self.zoom_config  # noqa: B018 (validates the zoom settings)

    @property
    def zoom_config(self) -> ZoomConfig:
        return ZoomConfig(self.zoom, self.zoom_margin, self.zoom_max_share)

    @property
    def postprocess(self) -> PostprocessConfig:
        return PostprocessConfig(keep_largest=self.keep_largest, fill_holes=self.fill_holes)


def clean_mask(mask: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Post-process one bool mask ``(H, W)``; returns a new bool array (an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    if config.keep_largest:
        mask = largest_component(mask)
    if config.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def clean_masks(masks: torch.Tensor, config: PostprocessConfig) -> torch.Tensor:
    """:func:`clean_mask` over a bool tensor ``(N, 1, H, W)``; returns a tensor of the same shape."""
    import torch

    if not config.active:
        return masks
    cleaned = np.stack([clean_mask(m[0], config) for m in masks.cpu().numpy()])
    return torch.from_numpy(cleaned)[:, None].to(masks.device)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of bool ``mask`` ``(H, W)`` (the mask itself when it has at most one)."""
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == sizes.argmax()


# The zoom-in second pass's box (lesionseg.model.zoom; torch-free here, for the ONNX reference too).
Box = tuple[int, int, int, int]  # (top, left, bottom, right) in model-input pixels, bottom/right exclusive


def lesion_box(mask: np.ndarray, margin: float) -> Box | None:
    """The bounding box of ``mask``'s largest 8-connected component (bool ``(S, S)``), widened by ``margin``
    of its height and width on each side (rounded outwards) and clipped to the image; ``None`` for an
    empty mask."""
    rows, cols = np.nonzero(largest_component(mask))
    if rows.size == 0:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    dy, dx = margin * (bottom - top), margin * (right - left)
    height, width = mask.shape
    return (
        max(0, math.floor(top - dy)),
        max(0, math.floor(left - dx)),
        min(height, math.ceil(bottom + dy)),
        min(width, math.ceil(right + dx)),
    )


def box_share(box: Box, size: int) -> float:
    """The share of a ``size`` x ``size`` image that ``box`` covers."""
    top, left, bottom, right = box
    return (bottom - top) * (right - left) / (size * size)


def zoom_box(mask: np.ndarray, config: ZoomConfig) -> Box | None:
    """The box the zoom-in second pass crops for a first-pass ``mask`` (bool ``(S, S)``):
    :func:`lesion_box` with ``config.margin``; ``None`` (first pass kept) when the zoom is off, the mask is
    empty, or the box covers ``config.max_share`` of the image or more."""
    box = lesion_box(mask, config.margin) if config.enabled else None
    return box if box is not None and box_share(box, mask.shape[0]) < config.max_share else None


def box_at(box: Box, size: int, height: int, width: int) -> Box:
    """``box`` (in a ``size`` x ``size`` model input) in a ``height`` x ``width`` image: edges scaled and
    rounded, at least one pixel high and wide."""
    top, left, bottom, right = box
    y0, x0 = round(top * height / size), round(left * width / size)
    return y0, x0, max(round(bottom * height / size), y0 + 1), max(round(right * width / size), x0 + 1)
