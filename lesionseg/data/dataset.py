"""Datasets over prepared uint8 tensors, with albumentations transforms."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:  # albumentations is imported where a CPU transform is built, not by every user of this module
    import albumentations as A

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: each field a probability (0 = off) or a range's size.

    The defaults augment nothing: a recipe (params.yaml's ``augment`` section,
    ``recipes/reference.yaml``) says what to apply; the library does not.

    ``scale_rotate``: probability of a random affine (shift up to 6%, scale
    ``1 +- scale_limit``, rotation up to ``rotate_limit`` degrees);
    ``hue_saturation``: probability of a hue/saturation/value jitter.

    What spans cameras (each a probability, 0 = off):
    ``gamma`` (gamma 0.7-1.5), ``blur`` (Gaussian blur, sigma up to 1.2 px
    at 128 px), ``noise`` (Gaussian sensor noise, std up to 5% of the range),
    ``jpeg`` (JPEG re-compression at quality 40-95). The ranges are the
    module's ``*_LIMIT`` constants, shared with the batched GPU version
    (:mod:`lesionseg.data.batch_augment`).
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

    def __post_init__(self):
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.scale_limit < 1.0:
            raise ValueError(f"scale_limit must be in [0, 1), got {self.scale_limit!r}")


PROBABILITIES = (
    "hflip",
    "vflip",
    "brightness_contrast",
    "scale_rotate",
    "hue_saturation",
    "gamma",
    "blur",
    "noise",
    "jpeg",
)
# Every transform's range, used by both augmentation paths (albumentations here, batched tensor ops in
# lesionseg.data.batch_augment), so the two draw from the same distributions. The probabilities are the recipe's
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


def train_transform(config: AugmentConfig, seed: int | None = None) -> A.Compose:
    """Augmentation + ImageNet normalisation. Masks are only moved, never interpolated
    (nearest neighbour), so they stay binary. ``seed`` makes the random stream reproducible:
    albumentations keeps its own generator that global seeds do not reach."""
    import albumentations as A

    transforms = [A.HorizontalFlip(p=config.hflip), A.VerticalFlip(p=config.vflip)]
    if config.scale_rotate > 0:
        transforms.append(
            A.Affine(
                scale=(1 - config.scale_limit, 1 + config.scale_limit),
                translate_percent=(-SHIFT_LIMIT, SHIFT_LIMIT),
                rotate=(-config.rotate_limit, config.rotate_limit),
                border_mode=0,
                mask_interpolation=0,
                p=config.scale_rotate,
            )
        )
    transforms.append(
        A.RandomBrightnessContrast(
            brightness_limit=BRIGHTNESS_LIMIT, contrast_limit=CONTRAST_LIMIT, p=config.brightness_contrast
        )
    )
    if config.hue_saturation > 0:
        transforms.append(
            A.HueSaturationValue(
                hue_shift_limit=HUE_SHIFT_LIMIT,
                sat_shift_limit=SAT_SHIFT_LIMIT,
                val_shift_limit=VAL_SHIFT_LIMIT,
                p=config.hue_saturation,
            )
        )
    if config.gamma > 0:
        transforms.append(A.RandomGamma(gamma_limit=tuple(round(100 * g) for g in GAMMA_LIMIT), p=config.gamma))
    if config.blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=BLUR_KERNEL_LIMIT, sigma_limit=BLUR_SIGMA_LIMIT, p=config.blur))
    if config.noise > 0:
        transforms.append(A.GaussNoise(std_range=NOISE_STD_LIMIT, p=config.noise))
    if config.jpeg > 0:
        transforms.append(A.ImageCompression(quality_range=JPEG_QUALITY_LIMIT, p=config.jpeg))
    transforms.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return A.Compose(transforms, seed=seed)


def eval_transform() -> A.Compose:
    """ImageNet normalisation only."""
    import albumentations as A

    return A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


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
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)``; same maths as :func:`eval_transform`."""
    return normalize_float(images.permute(0, 3, 1, 2).float())


class SegmentationDataset(Dataset):
    """Items ``(image float (3, S, S), mask float (1, S, S), index)`` from cached tensors.

    ``images``: uint8 ``(N, S, S, 3)``; ``masks``: uint8 ``(N, S, S)`` with 0/1.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, transform: A.Compose):
        if images.shape[:3] != masks.shape:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match")
        self.images = images.numpy()
        self.masks = masks.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        out = self.transform(image=self.images[index], mask=self.masks[index])
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return image, mask, index
