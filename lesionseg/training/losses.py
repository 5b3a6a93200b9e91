"""Training loss: BCE-with-logits plus soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DiceBCELoss(nn.Module):
    """``bce_weight * BCEWithLogits + dice_weight * (1 - soft Dice)`` on logits.

    Shapes: ``logits`` and ``target`` are ``(N, 1, H, W)`` (or any equal
    shapes); ``target`` holds 0/1 floats. Returns a scalar.

    Soft Dice is computed over the whole batch (all pixels pooled), not per
    image and averaged: images with an empty or tiny mask would otherwise give
    a Dice term of 0 or 1 with huge gradients from a handful of pixels. This is
    also how the reference report's DiceBCE is defined. ``smooth`` (default 1)
    is added to numerator and denominator so the term is defined for an
    all-empty batch and the gradient stays bounded.
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
