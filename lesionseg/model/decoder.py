"""U-Net style decoder of the reference report.

Three up-steps, deep to shallow: ``ConvTranspose2d`` (kernel 2, stride 2), then
concatenation with the encoder skip of matching stride, then a conv block.
Channel plan with the MobileNetV2 encoder: 1280 -> 512 (+96 skip) -> 256;
256 -> 256 (+32) -> 128; 128 -> 128 (+24) -> 64; a 1x1 head gives one logit map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ConvBlock(nn.Sequential):
    """Conv2d 3x3 (bias, padding = dilation) + BatchNorm2d + ReLU.

    Dilation widens the receptive field without changing the parameter count
    (the reference report calls these "dilated blocks").
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _UpStep(nn.Module):
    """Upsample by 2 with a transposed conv, concatenate the skip, convolve."""

    def __init__(self, in_channels: int, up_channels: int, skip_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
        self.block = _ConvBlock(up_channels + skip_channels, out_channels, dilation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Sides that are not multiples of 32 round differently at each stride.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decoder over encoder features ``[f4, f8, f16, f32]`` (strides 4..32).

    ``forward(features)`` returns logits of shape ``(N, 1, H/4, W/4)`` at the
    resolution of the shallowest feature; the model upsamples to the input.
    """

    def __init__(self, encoder_channels=(24, 32, 96, 1280), dilation: int = 1):
        super().__init__()
        c4, c8, c16, c32 = encoder_channels
        self.up16 = _UpStep(c32, 512, c16, 256, dilation)
        self.up8 = _UpStep(256, 256, c8, 128, dilation)
        self.up4 = _UpStep(128, 128, c4, 64, dilation)
        self.head = nn.Conv2d(64, 1, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f4, f8, f16, f32 = features
        x = self.up16(f32, f16)
        x = self.up8(x, f8)
        x = self.up4(x, f4)
        return self.head(x)
