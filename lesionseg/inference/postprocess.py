"""Mask post-processing common in lesion segmentation (one lesion per image, no holes).

ISIC 2016 images show one lesion, so stray blobs of skin texture, hair or
ruler marks predicted as lesion are false positives, and a hole inside a
lesion is a false negative. Both clean-ups act on the thresholded mask at the
resolution it is scored at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from lesionseg.inference.settings import PostprocessConfig

if TYPE_CHECKING:  # imported where used: clean_mask serves the torch-free ONNX reference too
    import torch

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


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
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == sizes.argmax()
