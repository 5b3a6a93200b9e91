"""The zoom-in second pass: segment a small lesion again from a crop around it.

:func:`zoom_pass` crops each image's widened first-pass lesion box (:func:`~lesionseg.inference.boxes.zoom_box`;
none for a large lesion) from the model-input image, resizes it to the input size and runs the same model on it
(:func:`lesionseg.inference.predict.predict` runs both passes); :func:`compose_logits` gives one image's logits at
any resolution, the crop's over the box. The procedure and its measurements: docs/other-clinics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.data.normalize import normalize_float
from lesionseg.inference.boxes import Box, box_at, zoom_box
from lesionseg.inference.logits import logits_function, upsample_logits
from lesionseg.inference.settings import InferenceSettings
from lesionseg.runtime import inference_numerics


def crop_input(images: torch.Tensor, box: Box) -> torch.Tensor:
    """The box of one uint8 image ``(S, S, 3)`` resized to ``(S, S)`` (bilinear, half-pixel centres), as a
    normalised float ``(1, 3, S, S)`` model input."""
    top, left, bottom, right = box
    size = images.shape[0]
    crop = images[top:bottom, left:right].permute(2, 0, 1)[None].float()
    return normalize_float(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))


@dataclass
class ZoomPass:
    """The second pass over N images: ``boxes[i]`` the crop of image ``i`` (``None``: first pass kept) and
    ``logits[i]`` ``(1, S, S)`` the crop's logits (zeros where not zoomed)."""

    boxes: list[Box | None]
    logits: torch.Tensor


@torch.no_grad()
def zoom_pass(
    model: nn.Module,
    images: torch.Tensor,
    first_logits: torch.Tensor,
    settings: InferenceSettings,
    batch_size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> ZoomPass:
    """The second pass for uint8 ``images`` ``(N, S, S, 3)`` given the first pass's ``first_logits``
    ``(N, 1, S, S)``: each image's box (:func:`~lesionseg.inference.boxes.zoom_box` of the lesion, probability above
    ``settings.threshold``, with ``settings.zoom``) cropped and run in eval mode with the settings' flip TTA, as
    the first pass was, in ``precision`` (:func:`~lesionseg.runtime.inference_numerics`)."""
    size = images.shape[1]
    boxes = [zoom_box((logits[0] > settings.threshold_logit).numpy(), settings.zoom) for logits in first_logits]
    out = torch.zeros(len(images), 1, size, size)
    todo = [i for i, box in enumerate(boxes) if box is not None]
    device = device or next(model.parameters()).device
    forward = logits_function(settings)
    was_training = model.training
    model.eval()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = torch.cat([crop_input(images[i], boxes[i]) for i in chunk]).to(device)
        with inference_numerics(device, precision):
            out[chunk] = forward(model, batch).cpu()
    model.train(was_training)
    return ZoomPass(boxes, out)


def compose_logits(
    first_logits: torch.Tensor, second_pass: ZoomPass | None, index: int, height: int, width: int
) -> torch.Tensor:
    """Image ``index``'s logits ``(1, 1, height, width)``: the first pass's upsampled (bilinear), with the
    zoom pass's crop logits resized onto its box (box edges scaled from model-input pixels and rounded)."""
    logits = upsample_logits(first_logits[index : index + 1], height, width)
    box = second_pass.boxes[index] if second_pass is not None else None
    if box is None:
        return logits
    y0, x0, y1, x1 = box_at(box, first_logits.shape[-1], height, width)
    logits = logits.clone()
    logits[..., y0:y1, x0:x1] = upsample_logits(second_pass.logits[index : index + 1], y1 - y0, x1 - x0)
    return logits


def composed_at_input_size(first_logits: torch.Tensor, second_pass: ZoomPass | None) -> torch.Tensor:
    """All images' :func:`compose_logits` at the model's input size ``(N, 1, S, S)`` (the first pass's own
    logits when nothing was zoomed)."""
    if second_pass is None or all(box is None for box in second_pass.boxes):
        return first_logits
    size = first_logits.shape[-1]
    return torch.cat([compose_logits(first_logits, second_pass, i, size, size) for i in range(len(first_logits))])
