"""ImageNet normalisation of model inputs: the encoder's pre-training statistics, as tensor ops."""

from __future__ import annotations

import functools

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh host-to-GPU copy on every training step would stall it.
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize_float(x: torch.Tensor) -> torch.Tensor:
    """Float ``(N, 3, H, W)`` with values in [0, 255] -> ImageNet-normalised, same device."""
    mean, std = _imagenet_stats(x.device)
    return (x / 255.0 - mean) / std


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)``; what albumentations' ``Normalize`` in
    :func:`lesionseg.augment.dataset.train_transform` computes."""
    return normalize_float(images.permute(0, 3, 1, 2).float())
