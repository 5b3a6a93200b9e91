"""The zoom-in second pass's box (:mod:`lesionseg.inference.zoom`): where the predicted lesion is, widened, and the
same box at another resolution. Torch-free, for the ONNX reference too."""

from __future__ import annotations

import math

import numpy as np

from lesionseg.inference.postprocess import largest_component
from lesionseg.inference.settings import ZoomConfig

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in model-input pixels, bottom/right exclusive


def _lesion_box(mask: np.ndarray, margin: float) -> Box | None:
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


def _box_share(box: Box, size: int) -> float:
    """The share of a ``size`` x ``size`` image that ``box`` covers."""
    top, left, bottom, right = box
    return (bottom - top) * (right - left) / (size * size)


def zoom_box(mask: np.ndarray, config: ZoomConfig) -> Box | None:
    """The box the zoom-in second pass crops for a first-pass ``mask`` (bool ``(S, S)``):
    the bounding box of its largest 8-connected component, widened by ``config.margin`` of its height and width on
    each side (rounded outwards, clipped); ``None`` (first pass kept) when the zoom is off, the mask is
    empty, or the box covers ``config.max_share`` of the image or more."""
    box = _lesion_box(mask, config.margin) if config.enabled else None
    return box if box is not None and _box_share(box, mask.shape[0]) < config.max_share else None


def box_at(box: Box, size: int, height: int, width: int) -> Box:
    """``box`` (in a ``size`` x ``size`` model input) in a ``height`` x ``width`` image: edges scaled and
    rounded, at least one pixel high and wide."""
    top, left, bottom, right = box
    y0, x0 = round(top * height / size), round(left * width / size)
    return y0, x0, max(round(bottom * height / size), y0 + 1), max(round(right * width / size), x0 + 1)
