"""One function from a model to masks: :func:`predict` applies :class:`~lesionseg.inference.settings.InferenceSettings`.

Every path that turns a model into masks calls it (evaluation, cross-validation scoring, calibration,
``lesionseg predict`` and ``evaluate``, the MLflow pyfunc, the report's samples), so an image gets one mask, one
quality score and one review flag everywhere. On uint8 model inputs ``(N, S, S, 3)``: the logits (flip TTA), the
zoom-in second pass, each mask's quality and review flag at the input size; :meth:`Prediction.mask` gives a mask
at any size (resized logits, threshold, clean-up). :mod:`lesionseg.inference.onnx_reference` mirrors it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesionseg.inference.logits import logits_function, predict_uint8
from lesionseg.inference.postprocess import clean_mask, clean_masks
from lesionseg.inference.quality import mask_quality, needs_review
from lesionseg.inference.settings import InferenceSettings
from lesionseg.inference.zoom import ZoomPass, compose_logits, composed_at_input_size, zoom_pass

__all__ = ["Prediction", "mask_from_logits", "predict"]


@dataclass(frozen=True)
class Prediction:
    """The model's predictions for N images under ``settings``.

    ``first_logits`` ``(N, 1, S, S)``: the first pass's logits; ``second_pass``: the zoom-in pass (``None`` with
    the zoom off); ``input_logits`` ``(N, 1, S, S)``: both composed at the input size; ``quality`` float32
    ``(N,)`` and ``review`` bool ``(N,)``: each mask's quality and whether it is flagged for review.
    """

    settings: InferenceSettings
    first_logits: torch.Tensor
    second_pass: ZoomPass | None
    input_logits: torch.Tensor
    quality: np.ndarray
    review: np.ndarray

    @classmethod
    def from_logits(
        cls, settings: InferenceSettings, first_logits: torch.Tensor, second_pass: ZoomPass | None = None
    ) -> Prediction:
        """The prediction that the first pass's ``first_logits`` ``(N, 1, S, S)`` and ``second_pass`` make under
        ``settings``: the composed logits, each mask's quality and review flag."""
        composed = composed_at_input_size(first_logits, second_pass)
        quality = mask_quality(torch.sigmoid(composed), settings.threshold).numpy()
        return cls(
            settings, first_logits, second_pass, composed, quality, needs_review(quality, settings.review_threshold)
        )

    def __len__(self) -> int:
        return len(self.first_logits)

    @property
    def zoomed(self) -> list[bool]:
        """Per image, whether the zoom-in second pass replaced part of its logits (all False with the zoom off)."""
        if self.second_pass is None:
            return [False] * len(self)
        return [box is not None for box in self.second_pass.boxes]

    def logits(self, index: int, height: int, width: int) -> torch.Tensor:
        """Image ``index``'s logits ``(height, width)`` (:func:`~lesionseg.inference.zoom.compose_logits`)."""
        return compose_logits(self.first_logits, self.second_pass, index, height, width)[0, 0]

    def mask(self, index: int, height: int, width: int) -> torch.Tensor:
        """Image ``index``'s mask, bool ``(height, width)``: at its original size, the ISIC definition."""
        return mask_from_logits(self.logits(index, height, width), self.settings)

    def input_masks(self) -> torch.Tensor:
        """Every image's mask at the input size, bool ``(N, 1, S, S)``."""
        return clean_masks(self.input_logits > self.settings.threshold_logit, self.settings.postprocess)


def mask_from_logits(logits: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """One image's mask, bool ``(H, W)``: ``logits`` ``(H, W)`` above ``settings.threshold``'s logit, then
    ``settings.postprocess``."""
    mask = logits > settings.threshold_logit
    if settings.postprocess.active:
        mask = torch.from_numpy(clean_mask(mask.numpy(), settings.postprocess))
    return mask


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    settings: InferenceSettings,
    batch_size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> Prediction:
    """``model`` (put in eval mode for the call) on uint8 ``images`` ``(N, S, S, 3)`` with ``settings``, run
    ``batch_size`` images at a time on ``device`` (default: the model's) in ``precision``: fp32 (the default) gives
    one image one mask on every device; ``bf16``/``fp16`` autocast only when asked (see the module doc)."""
    first = predict_uint8(model, images, batch_size, device, precision, logits_function(settings))
    second = zoom_pass(model, images, first, settings, batch_size, device, precision) if settings.zoom.enabled else None
    return Prediction.from_logits(settings, first, second)
