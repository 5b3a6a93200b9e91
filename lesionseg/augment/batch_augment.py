"""The training augmentation as batched tensor ops, for data kept on the training device.

On a GPU the model eats batches faster than a CPU loader can decode and augment them, so
:class:`DeviceBatches` keeps the cached uint8 tensors on the device and applies the
transforms of :func:`lesionseg.augment.dataset.train_transform`, in the same order, with the same ranges and
probabilities (:mod:`lesionseg.augment.augmentation`'s constants), to a whole batch. Each image draws its own
parameters and values stay on the uint8 grid, so the two paths agree in distribution, not pixel for pixel
(docs/scaling-out.md, "The augmentation on the GPU", maps each transform).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    crop_theta,
    lesion_crop_boxes,
)
from lesionseg.augment.dataset import local_batch_size
from lesionseg.data.normalize import normalize_float

# The batched blur builds the 3- and 5-tap kernels that albumentations draws from BLUR_KERNEL_LIMIT.
if BLUR_KERNEL_LIMIT != (3, 5):
    raise ImportError(f"batch_augment's blur implements kernel sizes (3, 5), not {BLUR_KERNEL_LIMIT}")


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _chosen(n: int, p: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _flip(x: torch.Tensor, m: torch.Tensor, p: float, dim: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = _chosen(len(x), p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(chosen, x.flip(dim), x), torch.where(chosen, m.flip(dim), m)


def _affine(x, m, p: float, rotate_limit: float, scale_limit: float, generator):
    """Random scale/shift/rotation about the centre of the chosen images (square images).

    Images not chosen get the identity transform, which samples exactly at the
    pixel centres: resampling the whole batch avoids selecting the chosen images
    by index, which would wait for the GPU on every step.
    """
    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device).view(n, 1, 1)
    # x and y scales drawn apart, as albumentations does
    scale = _uniform(2 * n, 1 - scale_limit, 1 + scale_limit, generator, device).view(n, 2)
    shift = _uniform(2 * n, -SHIFT_LIMIT, SHIFT_LIMIT, generator, device).view(n, 2)
    angle = _uniform(n, -rotate_limit, rotate_limit, generator, device) * (math.pi / 180)
    # affine_grid maps output to input coordinates (normalised to [-1, 1]): invert
    # out = R(a) S @ in + t, i.e. in = S^-1 R(-a) @ (out - t). A shift of f of the
    # side is 2 f in normalised units.
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    inverse = rotation / scale.unsqueeze(-1)  # row i divided by the scale of axis i
    offset = -(inverse @ (2 * shift).unsqueeze(-1))
    identity = torch.eye(2, 3, device=device).expand(n, 2, 3)
    theta = torch.where(chosen, torch.cat([inverse, offset], -1), identity)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).round()
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, m


def _lesion_crop(x, m, p: float, generator):
    """:func:`~lesionseg.augment.augmentation.lesion_crop_boxes`' crops of the chosen images, resized to the input size
    (image bilinear, mask nearest); the others keep the whole image (the identity grid)."""
    n, device, size = len(x), x.device, x.shape[-1]
    chosen = _chosen(n, p, generator, device)
    boxes = lesion_crop_boxes(m[:, 0] > 0, torch.rand(n, 3, generator=generator, device=device))
    boxes = torch.where(chosen[:, None], boxes, torch.tensor([0.0, 0.0, float(size)], device=device))
    grid = F.affine_grid(crop_theta(boxes, size), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).round()
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="border", align_corners=False)
    return x, m


def _brightness_contrast(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device).view(-1, 1, 1, 1)
    alpha = 1 + _uniform(n, -CONTRAST_LIMIT, CONTRAST_LIMIT, generator, device).view(-1, 1, 1, 1)
    beta = 255 * _uniform(n, -BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT, generator, device).view(-1, 1, 1, 1)
    return torch.where(chosen, (x * alpha + beta).clamp(0, 255).floor(), x)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 255] -> HSV with OpenCV's uint8 ranges: H in [0, 180), S and V in [0, 255]."""
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    chroma = value - x.min(1).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        (g - b) / safe_chroma,
        torch.where(value == g, 2 + (b - r) / safe_chroma, 4 + (r - g) / safe_chroma),
    )
    hue = torch.where(chroma > 0, (hue * 30) % 180, torch.zeros_like(hue))
    saturation = torch.where(value > 0, 255 * chroma / torch.where(value > 0, value, torch.ones_like(value)), 0)
    return torch.stack([hue, saturation, value], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(1)
    sector = hue / 30  # in [0, 6)
    chroma = value * saturation / 255
    k = torch.stack([(5 + sector) % 6, (3 + sector) % 6, (1 + sector) % 6], 1)
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * weight


def _hue_saturation(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device).view(-1, 1, 1, 1)
    hue_shift = _uniform(n, -HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT, generator, device).view(-1, 1, 1)
    sat_shift = _uniform(n, -SAT_SHIFT_LIMIT, SAT_SHIFT_LIMIT, generator, device).view(-1, 1, 1)
    val_shift = _uniform(n, -VAL_SHIFT_LIMIT, VAL_SHIFT_LIMIT, generator, device).view(-1, 1, 1)
    hue, saturation, value = _rgb_to_hsv(x).round().unbind(1)
    hue = (hue + hue_shift).floor() % 180
    saturation = torch.where(saturation > 0, (saturation + sat_shift).clamp(0, 255).floor(), saturation)
    value = (value + val_shift).clamp(0, 255).floor()
    shifted = _hsv_to_rgb(torch.stack([hue, saturation, value], 1)).round().clamp(0, 255)
    return torch.where(chosen, shifted, x)


def _gamma(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device).view(-1, 1, 1, 1)
    gamma = _uniform(n, GAMMA_LIMIT[0], GAMMA_LIMIT[1], generator, device).view(-1, 1, 1, 1)
    return torch.where(chosen, (255 * (x / 255) ** gamma).floor(), x)


def _blur(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    """Each chosen image blurred with its own kernel: one grouped convolution per axis for the batch."""
    n, channels, device = len(x), x.shape[1], x.device
    chosen = _chosen(n, p, generator, device).view(-1, 1)
    sigma = _uniform(n, BLUR_SIGMA_LIMIT[0], BLUR_SIGMA_LIMIT[1], generator, device).view(-1, 1)
    # albumentations draws the size from BLUR_KERNEL_LIMIT = {3, 4, 5} and makes it odd: 3 taps one time in three,
    # else 5
    three_taps = _chosen(n, 1 / 3, generator, device).view(-1, 1)
    offsets = torch.arange(-2, 3, device=device, dtype=x.dtype).view(1, -1)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.where(three_taps & (offsets.abs() == 2), torch.zeros_like(kernel), kernel)
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, -1)
    kernel = torch.where(chosen, kernel, identity).repeat_interleave(channels, 0)  # (N * C, 5)
    flat = x.reshape(1, n * channels, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, 5), groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="reflect"), kernel.view(-1, 1, 5, 1), groups=n * channels)
    return flat.view_as(x).round().clamp(0, 255)


def _noise(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device).view(-1, 1, 1, 1)
    std = 255 * _uniform(n, NOISE_STD_LIMIT[0], NOISE_STD_LIMIT[1], generator, device).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device=device) * std
    return torch.where(chosen, (x + noise).clamp(0, 255).round(), x)


def _jpeg(x: torch.Tensor, p: float, generator) -> torch.Tensor:
    """JPEG round trip of the chosen images, each at its own quality: libjpeg on the host, as the CPU
    loader's codec (a GPU codec's IDCT rounds differently), one 128 px image at a time (a few per batch)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    n, device = len(x), x.device
    chosen = _chosen(n, p, generator, device)
    quality = torch.randint(JPEG_QUALITY_LIMIT[0], JPEG_QUALITY_LIMIT[1] + 1, (n,), generator=generator, device=device)
    indices = chosen.nonzero().flatten().tolist()
    if not indices:
        return x
    x = x.clone()
    for i, q in zip(indices, quality[indices].tolist()):
        data = encode_jpeg(x[i].to(device="cpu", dtype=torch.uint8), quality=q)
        x[i] = decode_jpeg(data).to(device=device, dtype=x.dtype)
    return x


# Probability field -> transform of the image only, in train_transform's order.
_PIXEL_TRANSFORMS = (
    ("brightness_contrast", _brightness_contrast),
    ("hue_saturation", _hue_saturation),
    ("gamma", _gamma),
    ("blur", _blur),
    ("noise", _noise),
    ("jpeg", _jpeg),
)


def _augment_batch(
    images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment and normalise a batch on its own device.

    ``images``: uint8 ``(N, S, S, 3)``; ``masks``: uint8 ``(N, S, S)`` with 0/1.
    Returns normalised float images ``(N, 3, S, S)`` and float 0/1 masks
    ``(N, 1, S, S)``. ``generator`` (on the same device) makes it reproducible.
    """
    x = images.permute(0, 3, 1, 2).float()
    m = masks.unsqueeze(1).float()
    if config.lesion_crop > 0:  # first: it looks for the lesion in the unaugmented mask
        x, m = _lesion_crop(x, m, config.lesion_crop, generator)
    x, m = _flip(x, m, config.hflip, -1, generator)
    x, m = _flip(x, m, config.vflip, -2, generator)
    if config.scale_rotate > 0:
        x, m = _affine(x, m, config.scale_rotate, config.rotate_limit, config.scale_limit, generator)
    for name, transform in _PIXEL_TRANSFORMS:
        if getattr(config, name) > 0:
            x = transform(x, getattr(config, name), generator)
    return normalize_float(x), m


class DeviceBatches:
    """Shuffled, augmented training batches from cached uint8 tensors held on ``device``.

    The GPU counterpart of ``DataLoader(SegmentationDataset(...), shuffle=True)``: the split is copied to the device
    once, each epoch draws a new order from a CPU generator seeded with ``seed``, and the augmentation runs on the
    device; yields ``(images, masks)``, the last batch maybe smaller. ``shard=(rank, world_size)``: ``batch_size``
    is the global batch (it must split evenly: :func:`~lesionseg.augment.dataset.local_batch_size`); every rank draws
    the same order, padded like ``DistributedSampler``, and yields its strided, equal share of each global batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        batch_size: int,
        augment: AugmentConfig,
        seed: int,
        device,
        shard: tuple[int, int] = (0, 1),
    ):
        if images.shape[:3] != masks.shape:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match")
        self.rank, self.world_size = shard
        local_batch_size(batch_size, self.world_size)
        device = torch.device(device)
        self.images, self.masks = images.to(device), masks.to(device)
        self.batch_size, self.augment = batch_size, augment
        self.order_generator = torch.Generator().manual_seed(seed)
        self.augment_seed, self.augment_generator = seed + self.rank, None  # made on first use (see __iter__)

    def __len__(self) -> int:
        padded = math.ceil(len(self.images) / self.world_size) * self.world_size
        return math.ceil(padded / self.batch_size)

    def __iter__(self):
        if self.augment_generator is None:  # the device's RNG is first touched here, not when the batches are set up
            self.augment_generator = torch.Generator(device=self.images.device).manual_seed(self.augment_seed)
        order = torch.randperm(len(self.images), generator=self.order_generator)
        padded = math.ceil(len(order) / self.world_size) * self.world_size
        order = torch.cat([order, order[: padded - len(order)]]).to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size][self.rank :: self.world_size]
            yield _augment_batch(self.images[index], self.masks[index], self.augment, self.augment_generator)
