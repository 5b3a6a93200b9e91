"""Training loss: BCE-with-logits plus soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DiceBCELoss(nn.Module):
    """``bce_weight * BCEWithLogits + dice_weight * (1 - soft Dice)`` on logits; returns a scalar.

    ``logits`` and ``target`` (0/1 floats) have equal shapes, e.g. ``(N, 1, H, W)``. Soft Dice pools every pixel of
    the batch, not per image (images with an empty or tiny mask would otherwise give huge gradients from a handful of
    pixels; the reference report's DiceBCE does the same); ``smooth`` (default 1) is added to numerator and
    denominator, so an all-empty batch is defined and the gradient bounded.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        probs = torch.sigmoid(logits)
        intersection = (probs * target).sum()
        dice = (2 * intersection + self.smooth) / (probs.sum() + target.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)
