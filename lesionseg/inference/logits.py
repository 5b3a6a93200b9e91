"""Batched logits of prepared uint8 images, plain or flip-averaged (TTA), and their resize to an image's size."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.data.normalize import normalize_batch
from lesionseg.inference.settings import InferenceSettings
from lesionseg.runtime import inference_numerics


@torch.no_grad()
def _plain_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, 1, H, W)`` float32 for normalised ``x`` ``(N, 3, H, W)``."""
    return model(x).float()


@torch.no_grad()
def _flip_averaged_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Flip TTA: the mean of the logits ``(N, 1, H, W)`` of ``x`` and of its horizontal, vertical and double
    flip, each flipped back first."""
    total = model(x).float()
    for dims in ((-1,), (-2,), (-2, -1)):
        total += model(x.flip(dims)).float().flip(dims)
    return total / 4


LogitsFunction = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def logits_function(settings: InferenceSettings) -> LogitsFunction:
    """How the settings run the network on a batch: :func:`_flip_averaged_logits` with TTA, else
    :func:`_plain_logits`."""
    return _flip_averaged_logits if settings.tta else _plain_logits


@torch.no_grad()
def predict_uint8(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
    forward: LogitsFunction = _plain_logits,
) -> torch.Tensor:
    """Logits on the CPU, ``(N, 1, S, S)``, for uint8 ``(N, S, S, 3)`` images, in eval mode, each normalised
    batch run through ``forward`` (:func:`logits_function`; the plain network by default) in ``precision``
    (:func:`inference_numerics`)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = normalize_batch(images[start : start + batch_size].to(device))
        with inference_numerics(device, precision):
            out.append(forward(model, batch).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, *images.shape[1:3])


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``(N, 1, h, w)`` logits to ``(N, 1, height, width)``.

    Logits (not thresholded masks) are interpolated, so the boundary lands
    between pixels the way the network's probability field puts it.
    """
    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
