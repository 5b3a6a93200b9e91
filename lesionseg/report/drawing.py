"""Masks drawn onto images as numpy arrays: outlines, overlays, error maps.

Apart from the report's figures so that ``lesionseg predict --overlay`` draws its overlays without importing
matplotlib.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# True positive, false positive, false negative.
_ERROR_COLOURS = {"tp": (0.1, 0.75, 0.2), "fp": (0.95, 0.2, 0.15), "fn": (0.15, 0.35, 0.95)}


def error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB float ``(H, W, 3)``: true positives green, false positives red, false negatives blue, else black."""
    out = np.zeros((*truth.shape, 3))
    out[pred & truth] = _ERROR_COLOURS["tp"]
    out[pred & ~truth] = _ERROR_COLOURS["fp"]
    out[~pred & truth] = _ERROR_COLOURS["fn"]
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a bool mask."""
    return mask & ~ndimage.binary_erosion(mask)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """uint8 image with the predicted outline in yellow (and the true outline in cyan)."""
    out = image.copy()
    if truth is not None:
        out[ndimage.binary_dilation(outline(truth))] = (0, 230, 255)
    out[ndimage.binary_dilation(outline(pred))] = (255, 230, 0)
    return out
