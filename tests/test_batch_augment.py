"""The batched (device) augmentation against the albumentations (loader) one."""

import pickle

import cv2
import numpy as np
import pytest
import torch

from lesionseg.augment.augmentation import _LESION_CROP_MARGIN, AugmentConfig, lesion_crop_boxes
from lesionseg.augment.batch_augment import DeviceBatches, _augment_batch, _hsv_to_rgb, _rgb_to_hsv
from lesionseg.augment.dataset import SegmentationDataset, train_transform
from lesionseg.data.normalize import normalize_batch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_AUGMENT = AugmentConfig(hflip=0, vflip=0, brightness_contrast=0)
CAMERA = ("gamma", "blur", "noise", "jpeg")
GREY_LEVEL = 1 / (255 * 0.225)  # one uint8 step after ImageNet normalisation


def off_centre_pair(size=64):
    """A lesion in the top-left quadrant on a coloured, textured background: flips and shifts move it."""
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = (200, 150, 120)
    image += rng.normal(0, 10, image.shape)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:30, 12:28] = 1
    image[mask == 1] = (90, 60, 40)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def statistics(images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample statistics of normalised images (N, 3, S, S) and masks (N, 1, S, S)."""
    size = masks.shape[-1]
    coords = torch.arange(size, dtype=torch.float32)
    area = masks.sum((1, 2, 3)).clamp(min=1)
    return {
        "mask_area": masks.mean((1, 2, 3)),
        "mask_centre_x": (masks.sum((1, 2)) * coords).sum(-1) / area,
        "mask_centre_y": (masks.sum((1, 3)) * coords).sum(-1) / area,
        "brightness": images.mean((1, 2, 3)),
        "red_minus_blue": (images[:, 0] - images[:, 2]).mean((1, 2)),
        "contrast": images.std((1, 2, 3)),
        # blur lowers it, noise raises it, JPEG's block smoothing lowers it
        "sharpness": (images[..., 1:] - images[..., :-1]).abs().mean((1, 2, 3)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(hflip=0.5, vflip=0.5, brightness_contrast=0.5),  # the reference recipe's
        AugmentConfig(scale_rotate=0.5, hue_saturation=0.3),
        *(AugmentConfig(hflip=0, vflip=0, brightness_contrast=0, **{name: 1.0}) for name in CAMERA),
        AugmentConfig(scale_rotate=0.5, scale_limit=0.3, hue_saturation=0.3, gamma=0.3, blur=0.2, noise=0.2, jpeg=0.3),
        AugmentConfig(hflip=0.5, vflip=0.5, lesion_crop=0.7),
    ],
    ids=["reference", "rich", *CAMERA, "camera_geo", "lesion_crop"],
)
def test_device_augmentation_matches_albumentations_in_distribution(config, device):
    image, mask = off_centre_pair()
    n = 600
    transform = train_transform(config, seed=0)
    dataset = SegmentationDataset(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], transform)
    cpu = [dataset[0][:2] for _ in range(n)]
    cpu_images, cpu_masks = torch.stack([c[0] for c in cpu]), torch.stack([c[1] for c in cpu])
    images = torch.from_numpy(image).expand(n, -1, -1, -1).to(device)
    masks = torch.from_numpy(mask).expand(n, -1, -1).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    dev_images, dev_masks = _augment_batch(images, masks, config, generator)

    assert dev_images.shape == cpu_images.shape and dev_masks.shape == cpu_masks.shape
    assert set(dev_masks.unique().tolist()) <= {0.0, 1.0}
    ours, theirs = statistics(dev_images.cpu(), dev_masks.cpu()), statistics(cpu_images, cpu_masks)
    for name in ours:
        # At least a grey level: albumentations hands RGB to OpenCV's JPEG codec (which expects BGR), so its
        # chroma weights red and blue the other way round; colour statistics differ by a fraction of a level.
        spread = max(float(theirs[name].std()), GREY_LEVEL)
        assert abs(float(ours[name].mean() - theirs[name].mean())) < 0.25 * spread, name
        assert float(ours[name].std()) == pytest.approx(float(theirs[name].std()), rel=0.25, abs=2e-3), name


@pytest.mark.parametrize("device", DEVICES)
def test_certain_flips_equal_albumentations_exactly(device):
    image, mask = off_centre_pair()
    config = AugmentConfig(hflip=1, vflip=1, brightness_contrast=0)
    out = train_transform(config, seed=0)(image=image, mask=mask)
    images, masks = _augment_batch(
        torch.from_numpy(image)[None].to(device), torch.from_numpy(mask)[None].to(device), config
    )
    expected = torch.from_numpy(out["image"].transpose(2, 0, 1).copy())[None]
    torch.testing.assert_close(images.cpu(), expected, atol=1e-5, rtol=0)
    assert torch.equal(masks.cpu()[0, 0], torch.from_numpy(out["mask"]).float())


def test_no_augmentation_is_plain_normalisation():
    image, mask = off_centre_pair()
    images, masks = _augment_batch(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], NO_AUGMENT)
    torch.testing.assert_close(images, normalize_batch(torch.from_numpy(image)[None]))
    assert torch.equal(masks[0, 0], torch.from_numpy(mask).float())


def test_hsv_conversion_matches_opencv():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    hsv = _rgb_to_hsv(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).round().numpy()
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)
    diff = np.abs(hsv - expected)
    diff[..., 0] = np.minimum(diff[..., 0], 180 - diff[..., 0])  # hue is circular
    assert diff.max() <= 1
    back = _hsv_to_rgb(torch.from_numpy(expected).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).round().numpy()
    assert np.abs(back - cv2.cvtColor(expected.astype(np.uint8), cv2.COLOR_HSV2RGB)).max() <= 1


def test_device_batches_cover_the_split_once_per_epoch_reproducibly():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 4, 4, 3).contiguous()
    masks = torch.zeros(10, 4, 4, dtype=torch.uint8)

    def epoch_values(batches):
        return [round(float(x[i, 0, 0, 0] * 0.229 + 0.485) * 255) for x, _ in batches for i in range(len(x))]

    assert [len(x) for x, _ in DeviceBatches(images, masks, 4, NO_AUGMENT, seed=3, device="cpu")] == [4, 4, 2]
    first = DeviceBatches(images, masks, 4, NO_AUGMENT, seed=3, device="cpu")
    assert len(first) == 3
    a, b = epoch_values(first), epoch_values(first)
    assert sorted(a) == list(range(10)) and sorted(b) == list(range(10)) and a != b  # reshuffled each epoch
    assert epoch_values(DeviceBatches(images, masks, 4, NO_AUGMENT, seed=3, device="cpu")) == a


def test_device_batches_reject_mismatched_masks():
    with pytest.raises(ValueError, match="do not match"):
        DeviceBatches(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(3, 4, 4), 2, NO_AUGMENT, 0, "cpu")


def test_images_not_chosen_for_the_affine_come_back_unchanged():
    image, mask = off_centre_pair()
    config = AugmentConfig(hflip=0, vflip=0, brightness_contrast=0, scale_rotate=1e-9)
    images, masks = _augment_batch(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], config)
    torch.testing.assert_close(images, normalize_batch(torch.from_numpy(image)[None]))
    assert torch.equal(masks[0, 0], torch.from_numpy(mask).float())


def test_lesion_crops_keep_the_whole_lesion_and_zoom_in():
    _, mask = off_centre_pair()  # the lesion: rows 8-29, columns 12-27 (extent 22)
    masks = torch.from_numpy(mask > 0)[None].expand(5, -1, -1)
    draws = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.3, 0.9], [0.2, 1.0, 0.0]])
    boxes = lesion_crop_boxes(masks, draws)
    tightest = 22 * (1 + 2 * _LESION_CROP_MARGIN)
    assert boxes[0].tolist() == pytest.approx([30 - tightest, 0.0, tightest], abs=1e-5)  # u = 0: smallest, first place
    assert boxes[1].tolist() == pytest.approx([8.0, 12.0, tightest])  # u = 1: the box's corner at the lesion's
    assert boxes[2].tolist() == pytest.approx([0.0, 0.0, 64.0])  # the largest side is the whole image
    top, left, side = boxes.unbind(1)
    assert bool(((top <= 8) & (top + side >= 30) & (left <= 12) & (left + side >= 28)).all())  # holds the lesion
    assert bool(((top >= 0) & (left >= 0) & (top + side <= 64) & (left + side <= 64)).all())  # inside the image
    empty = lesion_crop_boxes(torch.zeros(1, 64, 64, dtype=torch.bool), torch.rand(1, 3))
    assert empty.tolist() == [[0.0, 0.0, 64.0]]


@pytest.mark.parametrize("path", ["albumentations", "batched"])
def test_both_paths_crop_around_the_lesion(path):
    image, mask = off_centre_pair()
    config, n = AugmentConfig(lesion_crop=1.0), 200
    if path == "albumentations":
        transform = train_transform(config, seed=0)
        masks = torch.stack([torch.from_numpy(transform(image=image, mask=mask)["mask"]) for _ in range(n)]).float()
    else:
        images = torch.from_numpy(image).expand(n, -1, -1, -1)
        masks = _augment_batch(
            images, torch.from_numpy(mask).expand(n, -1, -1), config, torch.Generator().manual_seed(0)
        )[1][:, 0]
    area = masks.mean((1, 2))
    if path == "albumentations":  # DataLoader workers get the transform pickled (spawn start method)
        assert pickle.loads(pickle.dumps(transform))(image=image, mask=mask)["mask"].shape == mask.shape
    assert bool((area >= 0.9 * mask.mean()).all())  # never smaller: the crop only zooms in
    assert float(area.mean()) > 1.5 * mask.mean()  # on average the lesion fills more of the frame
    assert float(area.max()) > 0.3  # the tightest crops: (22 / 28.6)^2 x 16/22 of the frame
