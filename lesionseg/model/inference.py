"""Batched inference on prepared uint8 images, optional flip TTA, device choice."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.data.normalize import normalize_batch


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits ``(N, 1, H, W)`` float32 for normalised ``x`` ``(N, 3, H, W)``.

    With ``tta`` the logits of the image and its horizontal, vertical and
    double flip are averaged (each flipped back first).
    """
    if not tta:
        return model(x).float()
    total = model(x).float()
    for dims in ((-1,), (-2,), (-2, -1)):
        total += model(x.flip(dims)).float().flip(dims)
    return total / 4


@torch.no_grad()
def predict_uint8(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    device: torch.device | None = None,
    tta: bool = False,
    amp: bool = True,
) -> torch.Tensor:
    """Logits on the CPU, ``(N, 1, S, S)``, for uint8 ``(N, S, S, 3)`` images, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = normalize_batch(images[start : start + batch_size].to(device))
        with autocast(device, amp):
            out.append(predict_logits(model, batch, tta).cpu())
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
