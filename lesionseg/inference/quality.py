"""A quality score per predicted mask, from the probabilities the model computes anyway.

A mask is likely wrong when much of the predicted lesion is neither clearly lesion nor clearly skin.
:func:`mask_quality` is the one definition: ``lesionseg predict``, evaluation, the cross-validation tables and the
MLflow pyfunc all call it on the model-resolution probabilities; :func:`needs_review` is the review flag.
docs/predict.md, "Which masks to check".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: needs_review serves the torch-free ONNX reference too
    import torch

# A pixel whose probability lies within this distance of the threshold is "neither clearly lesion nor clearly
# skin"; chosen on predictions no model was trained on (docs/predict.md, "Which masks to check").
UNCERTAIN_MARGIN = 0.2


def mask_quality(
    probabilities: torch.Tensor,
    threshold: float = 0.5,
    margin: float = UNCERTAIN_MARGIN,
) -> torch.Tensor:
    """Quality of each predicted mask in ``[0, 1]``, higher = more likely right; float32 ``(N,)``.

    ``probabilities``: lesion probabilities ``(N, 1, H, W)`` (after TTA averaging, if any), the mask being
    ``probabilities > threshold``.

    A pixel is *uncertain* when its probability lies less than ``margin`` from ``threshold``. The score is
    ``1 - uncertain / predicted area``, clipped to ``[0, 1]``: 1 for a mask every pixel of which is clear, 0
    when the uncertain pixels are as many as the predicted lesion's, and 0 for an empty mask (every image
    shows a lesion, so nothing found is a failure).
    """
    if probabilities.ndim != 4 or probabilities.shape[1] != 1:
        raise ValueError(f"expected probabilities (N, 1, H, W), got shape {tuple(probabilities.shape)}")
    if not 0.0 < threshold < 1.0 or margin <= 0.0:
        raise ValueError(f"need a threshold in (0, 1) and a margin > 0, got threshold {threshold}, margin {margin}")
    import torch

    p = probabilities.float()
    uncertain = (p - threshold).abs() < margin
    area = (p > threshold).flatten(1).sum(1).float()
    share = uncertain.flatten(1).sum(1).float() / area.clamp(min=1)
    return torch.where(area > 0, (1 - share).clamp(0, 1), torch.zeros_like(area))


def needs_review(quality, threshold: float | None) -> np.ndarray:
    """Bool per mask: ``quality < threshold``; all False when there is no threshold (``None``)."""
    quality = np.asarray(quality, dtype=float)
    if threshold is None:
        return np.zeros(quality.shape, dtype=bool)
    return quality < threshold
