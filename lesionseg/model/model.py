"""The segmentation model: MobileNetV2 encoder + U-Net decoder, with freezing levels.

An unfreeze level (``0``-``4`` or ``"all"``, :func:`parse_unfreeze_level`) is the number of encoder stages that
train, counted from the deep end: 0 trains the decoder only, 4 (``all``) everything. The levels' parameter counts:
docs/reference.md, "Unfreeze levels".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.model.colour import METHODS as COLOUR_METHODS
from lesionseg.model.colour import build_colour_constancy
from lesionseg.model.decoder import UNetDecoder
from lesionseg.model.encoder import IMAGENET_WEIGHTS, MobileNetV2Encoder, build_encoder

__all__ = [
    "parse_unfreeze_level",
    "level_name",
    "ModelConfig",
    "LesionSegModel",
    "build_model",
    "count_parameters",
    "parameter_counts_by_level",
]

_NUM_STAGES = 4
_UNFREEZE_LEVELS = ("0", "1", "2", "3", "4", "all")


def parse_unfreeze_level(value: int | str) -> int:
    """Turn ``0``-``4`` or ``"all"`` into the number of trainable encoder stages."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text not in _UNFREEZE_LEVELS:
        raise ValueError(f"unfreeze level {value!r} is not valid; valid values: 0, 1, 2, 3, 4, all (4 = all)")
    return _NUM_STAGES if text == "all" else int(text)


def level_name(level: int) -> str:
    """Canonical name of a level: ``"0"``.. ``"3"`` or ``"all"``."""
    return "all" if parse_unfreeze_level(level) == _NUM_STAGES else str(level)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings; stored in every checkpoint.

    ``encoder_weights``: ``"imagenet"``, ``"none"`` or a path to a local
    torchvision ``mobilenet_v2`` state dict. ``decoder_dilation``: dilation of
    the decoder's 3x3 convs (1 = plain convs, as in the reference report).
    ``colour_constancy``: ``none``, ``shades_of_gray`` (Minkowski norm
    ``minkowski_p``) or ``gray_world``, applied to every input image as the
    model's first step (see :mod:`lesionseg.model.colour`).
    """

    encoder_weights: str = IMAGENET_WEIGHTS
    decoder_dilation: int = 1
    colour_constancy: str = "none"
    minkowski_p: float = 6.0

    def __post_init__(self):
        if not isinstance(self.decoder_dilation, int) or self.decoder_dilation < 1:
            raise ValueError(f"decoder_dilation must be a positive integer, got {self.decoder_dilation!r}")
        if self.colour_constancy not in COLOUR_METHODS:
            raise ValueError(f"colour_constancy must be one of {COLOUR_METHODS}, got {self.colour_constancy!r}")
        if not self.minkowski_p >= 1:
            raise ValueError(f"minkowski_p must be >= 1, got {self.minkowski_p!r}")


class LesionSegModel(nn.Module):
    """``forward(x: (N, 3, H, W) normalised float) -> logits (N, 1, H, W)``.

    ``colour``: the input's colour constancy step (identity by default).
    """

    def __init__(self, encoder: MobileNetV2Encoder, decoder: UNetDecoder, colour: nn.Module | None = None):
        super().__init__()
        self.colour = colour if colour is not None else nn.Identity()
        self.encoder = encoder
        self.decoder = decoder
        self.unfreeze_level = _NUM_STAGES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(self.colour(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def frozen_stages(self) -> list[nn.Module]:
        return list(self.encoder.stages[: _NUM_STAGES - self.unfreeze_level])

    def set_unfreeze_level(self, level: int | str) -> LesionSegModel:
        """Train only the last ``level`` encoder stages (and the whole decoder).

        Frozen stages get ``requires_grad=False`` and keep their BatchNorm
        layers in eval mode, so their running statistics stay those of the
        pretrained weights, also across later calls to :meth:`train`.
        """
        self.unfreeze_level = parse_unfreeze_level(level)
        frozen = {id(m) for m in self.frozen_stages()}
        for stage in self.encoder.stages:
            stage.requires_grad_(id(stage) not in frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> LesionSegModel:
        super().train(mode)
        for stage in self.frozen_stages():
            stage.eval()
        return self


def build_model(config: ModelConfig = ModelConfig(), unfreeze: int | str = 0) -> LesionSegModel:
    """The reference model (6,995,457 parameters) at ``unfreeze`` level."""
    model = LesionSegModel(
        build_encoder(config.encoder_weights),
        UNetDecoder(dilation=config.decoder_dilation),
        build_colour_constancy(config.colour_constancy, config.minkowski_p),
    )
    return model.set_unfreeze_level(unfreeze)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


_SUMMARY_LEVELS = ("0", "1", "2", "3", "all")  # as level_name writes them


def parameter_counts_by_level() -> dict[str, dict[str, int]]:
    """:func:`count_parameters` at every unfreeze level, from a randomly initialised model (the architecture's
    counts; no weights are downloaded)."""
    model = build_model(ModelConfig(encoder_weights="none"))
    counts = {}
    for level in _SUMMARY_LEVELS:
        model.set_unfreeze_level(level)
        counts[level] = count_parameters(model)
    return counts
