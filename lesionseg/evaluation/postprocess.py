"""Mask post-processing common in lesion segmentation (one lesion per image, no holes).

ISIC 2016 images show one lesion, so stray blobs of skin texture, hair or
ruler marks predicted as lesion are false positives, and a hole inside a
lesion is a false negative. Both clean-ups act on the thresholded mask at the
resolution it is scored at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # imported where used: clean_mask and the configs serve the torch-free ONNX reference too
    import torch

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


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
class InferenceConfig:
    """How a trained model's logits become a mask: flip TTA, probability ``threshold``, clean-up.

    The defaults are the plain model (no TTA, threshold 0.5, no clean-up): the
    recipe (params.yaml's ``evaluate`` section) says what to apply, and the
    export stage stores the settings the model was evaluated with in the
    exported model, which ``lesionseg predict`` and the MLflow pyfunc use
    unless told otherwise.

    ``review_threshold``: masks whose quality (:func:`lesionseg.model.quality.mask_quality`) is below it
    are flagged for review (:mod:`lesionseg.evaluation.review`); ``None`` (a model exported before the
    threshold existed, or a training checkpoint): none is flagged.
    """

    tta: bool = False
    threshold: float = 0.5
    keep_largest: bool = False
    fill_holes: bool = False
    review_threshold: float | None = None

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError(f"review_threshold must be a quality in [0, 1], got {self.review_threshold!r}")

    @property
    def postprocess(self) -> PostprocessConfig:
        return PostprocessConfig(keep_largest=self.keep_largest, fill_holes=self.fill_holes)


def clean_mask(mask: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Post-process one bool mask ``(H, W)``; returns a new bool array (an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    if config.keep_largest:
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0  # background
            mask = labels == sizes.argmax()
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
