"""Colour constancy as the model's first step, so every path that runs the model applies it.

:func:`build_colour_constancy` gives the step a :class:`~lesionseg.model.model.LesionSegModel` runs first:
Shades of Gray (each image's illuminant as the per-channel Minkowski p-norm mean, divided out; p = 1 is Gray
World) or the identity. It has no parameters; its setting is stored with the model's config. Why, and what it
did on other clinics' images: docs/other-clinics.md.
"""

from __future__ import annotations

import torch
from torch import nn

from lesionseg.data.normalize import IMAGENET_MEAN, IMAGENET_STD

METHODS = ("none", "shades_of_gray", "gray_world")


class _ShadesOfGray(nn.Module):
    """``forward(x: (N, 3, H, W) ImageNet-normalised) -> same shape``, each image colour-corrected.

    Per image and channel ``c`` (pixel values ``v`` in [0, 1]): the illuminant
    ``e_c = mean(v_c ** p) ** (1 / p)``; the image is scaled by
    ``|e| / (sqrt(3) e_c)`` (a neutral illuminant leaves it unchanged),
    clipped to [0, 1] and normalised again. The estimate is a global statistic,
    so it is the same for an image and its flips (flip TTA is unaffected), and
    it does not depend on the other images of the batch.
    """

    def __init__(self, p: float = 6.0):
        super().__init__()
        if not p >= 1:
            raise ValueError(f"minkowski_p must be >= 1, got {p!r}")
        self.p = float(p)
        # Not persistent: checkpoints keep the state dict of the plain architecture.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = (x.float() * self.std + self.mean).clamp(0, 1)
        # eps keeps a black channel (e_c = 0) from dividing by zero; such an image stays black there.
        illuminant = values.pow(self.p).mean(dim=(2, 3), keepdim=True).pow(1 / self.p) + 1e-6
        gain = illuminant.norm(dim=1, keepdim=True) / (3**0.5 * illuminant)
        corrected = (values * gain).clamp(0, 1)
        return ((corrected - self.mean) / self.std).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


def build_colour_constancy(method: str, p: float = 6.0) -> nn.Module:
    """``none`` -> identity; ``shades_of_gray`` -> Shades of Gray with Minkowski norm ``p``; ``gray_world`` -> p = 1."""
    if method == "none":
        return nn.Identity()
    if method == "shades_of_gray":
        return _ShadesOfGray(p)
    if method == "gray_world":
        return _ShadesOfGray(1.0)
    raise ValueError(f"colour_constancy must be one of {METHODS}, got {method!r}")
