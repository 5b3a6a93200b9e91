"""The training augmentation's definition: which transforms (:class:`AugmentConfig`), their ranges, and the
lesion-aware crop's geometry.

Torch only, so that both augmentation paths build on it without importing each other: albumentations on the
CPU (:func:`lesionseg.augment.dataset.train_transform`, with :class:`lesionseg.augment.lesion_crop.LesionCrop`) and
batched tensor ops on the training device (:mod:`lesionseg.augment.batch_augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: each field a probability (0 = off, the default: a recipe says what to apply) or a range.

    ``scale_rotate``: a random affine (shift up to 6%, scale ``1 +- scale_limit``, rotation up to ``rotate_limit``
    degrees); ``hue_saturation``: a hue/saturation/value jitter; ``lesion_crop``: a random square crop that keeps
    the whole lesion (:func:`lesion_crop_boxes`), as the zoom-in second pass shows it. Across cameras: ``gamma``
    (0.7-1.5), ``blur`` (Gaussian, sigma up to 1.2 px at 128 px), ``noise`` (Gaussian, std up to 5% of the range),
    ``jpeg`` (re-compression at quality 40-95); the ranges are this module's ``*_LIMIT`` constants, shared with
    :mod:`lesionseg.augment.batch_augment`.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    brightness_contrast: float = 0.0
    scale_rotate: float = 0.0
    rotate_limit: int = 45
    scale_limit: float = 0.15
    hue_saturation: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg: float = 0.0
    lesion_crop: float = 0.0

    def __post_init__(self):
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.scale_limit < 1.0:
            raise ValueError(f"scale_limit must be in [0, 1), got {self.scale_limit!r}")


_PROBABILITIES = (
    "hflip",
    "vflip",
    "brightness_contrast",
    "scale_rotate",
    "hue_saturation",
    "gamma",
    "blur",
    "noise",
    "jpeg",
    "lesion_crop",
)
# Every transform's range, used by both augmentation paths (albumentations here, batched tensor ops in
# lesionseg.augment.batch_augment), so the two draw from the same distributions. The probabilities are the recipe's
# (params.yaml ``augment``); these ranges are not params: changing one changes the augmentation's definition.
SHIFT_LIMIT = 0.06  # the affine's shift, fraction of the side, per axis
BRIGHTNESS_LIMIT = 0.2  # x * (1 + U(-c, c)) + 255 * U(-b, b)
CONTRAST_LIMIT = 0.2
HUE_SHIFT_LIMIT = 20  # OpenCV HSV units: hue 0-180 (degrees / 2), saturation and value 0-255
SAT_SHIFT_LIMIT = 30
VAL_SHIFT_LIMIT = 20
GAMMA_LIMIT = (0.7, 1.5)
BLUR_SIGMA_LIMIT = (0.2, 1.2)  # pixels
BLUR_KERNEL_LIMIT = (3, 5)  # taps: albumentations draws 3-5 and makes it odd (3 one time in three, else 5)
NOISE_STD_LIMIT = (0.01, 0.05)  # of the value range
JPEG_QUALITY_LIMIT = (40, 95)
_LESION_CROP_MARGIN = 0.15  # the tightest lesion crop leaves this share of the lesion's extent on each side


def lesion_crop_boxes(masks: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Square crops that keep each mask's whole lesion: float ``(N, 3)`` rows ``(top, left, side)`` in pixels.

    ``masks``: bool ``(N, S, S)``; ``uniforms``: ``(N, 3)`` draws from U(0, 1). The side is drawn uniformly
    between the lesion's extent (the longer side of its bounding box) plus 0.15 of it
    on each side and the whole image, the position uniformly among the squares of that side that hold the
    bounding box inside the image. An empty mask gets the whole image (no crop). Both augmentation paths
    (albumentations' :class:`~lesionseg.augment.lesion_crop.LesionCrop` and the batched one) draw their crops here.
    """
    size = masks.shape[-1]
    index = torch.arange(size, device=masks.device, dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)  # (N, S): which rows / columns hold lesion pixels
    big = torch.tensor(float(size), device=masks.device)
    top = torch.where(rows, index, big).amin(1)
    bottom = torch.where(rows, index + 1, torch.zeros_like(big)).amax(1)
    left = torch.where(cols, index, big).amin(1)
    right = torch.where(cols, index + 1, torch.zeros_like(big)).amax(1)
    extent = torch.maximum(bottom - top, right - left)
    smallest = torch.clamp(extent * (1 + 2 * _LESION_CROP_MARGIN), max=size)
    side = smallest + uniforms[:, 0] * (size - smallest)
    crop_top = _place(top, bottom, side, size, uniforms[:, 1])
    crop_left = _place(left, right, side, size, uniforms[:, 2])
    empty = ~rows.any(1)
    boxes = torch.stack([crop_top, crop_left, side], 1)
    return torch.where(empty[:, None], torch.tensor([0.0, 0.0, float(size)], device=masks.device), boxes)


def _place(start: torch.Tensor, end: torch.Tensor, side: torch.Tensor, size: int, u: torch.Tensor) -> torch.Tensor:
    """A crop's start in [max(0, end - side), min(start, size - side)], drawn by ``u``: the span fits in it."""
    low = torch.clamp(end - side, min=0)
    high = torch.minimum(start, size - side)
    return low + u * torch.clamp(high - low, min=0)


def crop_theta(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``affine_grid`` matrices ``(N, 2, 3)`` (``align_corners=False``) that sample each ``(top, left, side)``
    box of a ``size`` x ``size`` image onto the whole output: output pixel ``x`` reads the input at
    ``left + (x + 0.5) * side / size - 0.5``."""
    scale = boxes[:, 2] / size
    theta = torch.zeros(len(boxes), 2, 3, device=boxes.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, 0, 2] = scale + 2 * boxes[:, 1] / size - 1
    theta[:, 1, 2] = scale + 2 * boxes[:, 0] / size - 1
    return theta
