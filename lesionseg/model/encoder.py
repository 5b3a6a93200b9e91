"""MobileNetV2 encoder split into the four stages the decoder taps.

:meth:`MobileNetV2Encoder.forward` on ``(N, 3, H, W)`` returns four feature maps, shallow to deep: torchvision's
``features[0:4]``, ``[4:7]``, ``[7:14]``, ``[14:19]``, with ``out_channels`` (24, 32, 96, 1280) at ``strides``
(4, 8, 16, 32). Spatial sizes are ``ceil(H / stride)`` (the convolutions pad), so any input side works; the
decoder resizes before concatenating.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from lesionseg.errors import (
    EncoderWeightsError,  # noqa: F401 (raised here; importable from here too)
    unreadable_torch_file,
)

_STAGE_SLICES = ((0, 4), (4, 7), (7, 14), (14, 19))
_STAGE_CHANNELS = (24, 32, 96, 1280)
_STAGE_STRIDES = (4, 8, 16, 32)

IMAGENET_WEIGHTS = "imagenet"
NO_WEIGHTS = "none"


class MobileNetV2Encoder(nn.Module):
    """torchvision MobileNetV2 ``features`` as four sequential stages."""

    out_channels = _STAGE_CHANNELS
    strides = _STAGE_STRIDES

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in _STAGE_SLICES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the four stage outputs for ``x`` of shape ``(N, 3, H, W)`` (see module doc)."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _load_mobilenet_v2(weights: str) -> nn.Module:
    """Build a torchvision ``mobilenet_v2`` with ``weights``.

    ``weights`` is ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, downloaded
    and cached by torchvision), ``"none"`` (random init) or a path to a local
    ``mobilenet_v2`` state dict saved with ``torch.save``.
    """
    if weights == NO_WEIGHTS:
        return mobilenet_v2(weights=None)
    if weights == IMAGENET_WEIGHTS:
        try:
            return mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
        except Exception as exc:  # torchvision raises URLError, HTTPError, OSError, ...
            raise EncoderWeightsError(
                "could not download torchvision's ImageNet MobileNetV2 weights "
                f"({type(exc).__name__}: {exc}). Offline, point the encoder weights at a local "
                "mobilenet_v2 state dict instead, e.g. "
                "`dvc exp run -S train.encoder_weights=/path/to/mobilenet_v2_imagenet.pth`."
            ) from exc
    return _load_state_dict_file(Path(weights))


def _load_state_dict_file(path: Path) -> nn.Module:
    if not path.is_file():
        raise EncoderWeightsError(
            f"encoder weights {str(path)!r}: no such file "
            f"(valid values: {IMAGENET_WEIGHTS!r}, {NO_WEIGHTS!r}, or a path to a state dict)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderWeightsError(
            f"encoder weights {path}: not a loadable state dict: {unreadable_torch_file(path, exc)}"
        ) from exc
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"encoder weights {path}: expected a state dict, got {type(state).__name__}")
    model = mobilenet_v2(weights=None)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EncoderWeightsError(
            f"encoder weights {path}: not a torchvision mobilenet_v2 state dict; "
            f"missing keys {_preview(result.missing_keys)}, unexpected keys {_preview(result.unexpected_keys)}"
        )
    return model


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def build_encoder(weights: str = IMAGENET_WEIGHTS) -> MobileNetV2Encoder:
    """MobileNetV2 encoder with ``weights``: ``"imagenet"`` (torchvision's), ``"none"`` (random) or the path of a
    torchvision ``mobilenet_v2`` state dict; :class:`EncoderWeightsError` when they cannot be had."""
    return MobileNetV2Encoder(_load_mobilenet_v2(weights).features)
