"""The training dataset over prepared uint8 tensors, with the albumentations transform of the recipe's
augmentation (:mod:`lesionseg.augment.augmentation` defines it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionseg.augment.augmentation import (
    BLUR_KERNEL_LIMIT,
    BLUR_SIGMA_LIMIT,
    BRIGHTNESS_LIMIT,
    CONTRAST_LIMIT,
    GAMMA_LIMIT,
    HUE_SHIFT_LIMIT,
    JPEG_QUALITY_LIMIT,
    NOISE_STD_LIMIT,
    SAT_SHIFT_LIMIT,
    SHIFT_LIMIT,
    VAL_SHIFT_LIMIT,
    AugmentConfig,
)
from lesionseg.data.normalize import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # albumentations is imported where a CPU transform is built, not by every user of this module
    import albumentations as A


def train_transform(config: AugmentConfig, seed: int | None = None) -> A.Compose:
    """Augmentation + ImageNet normalisation. Masks are only moved, never interpolated
    (nearest neighbour), so they stay binary. ``seed`` makes the random stream reproducible:
    albumentations keeps its own generator that global seeds do not reach."""
    import albumentations as A

    transforms = [A.HorizontalFlip(p=config.hflip), A.VerticalFlip(p=config.vflip)]
    if config.lesion_crop > 0:  # first: it looks for the lesion in the unaugmented mask
        from lesionseg.augment.lesion_crop import LesionCrop

        transforms.insert(0, LesionCrop(p=config.lesion_crop))
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


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``batch_size``: equal on every rank, else the gradient mean is not the
    global batch's and the ranks' epoch totals differ in length (a ValueError that names the nearest fixes)."""
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, (batch_size // world_size + 1) * world_size
        fixes = " or ".join(str(n) for n in (lower, upper) if n > 0)
        divisors = [n for n in range(2, min(batch_size, 8) + 1) if batch_size % n == 0]
        processes = f", or a number of processes that divides it ({', '.join(map(str, divisors))})" if divisors else ""
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must be a multiple of the number of processes "
            f"({world_size}) so that every rank gets an equal share: set it to {fixes}{processes}"
        )
    return batch_size // world_size
