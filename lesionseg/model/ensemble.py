"""Several trained models used as one: the mean of their lesion probabilities."""

from __future__ import annotations

import torch
from torch import nn

# The cross-validation fold models' ensemble, as the evaluate and export stages name it.
ENSEMBLE_NAME = "cv_ensemble"

# Probabilities are clamped to [_EPS, 1 - _EPS] before the logit, so a unanimous ensemble stays finite.
_EPS = 1e-6


class EnsembleModel(nn.Module):
    """``forward(x: (N, 3, H, W)) -> logits (N, 1, H, W)`` of the members' mean probability.

    Returning logits (not probabilities) keeps the ensemble a drop-in model:
    thresholding at logit 0 is thresholding the mean probability at 0.5, and
    flip TTA, upsampling to the original size, metrics and ONNX export work on
    it unchanged.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(probabilities, eps=_EPS)
