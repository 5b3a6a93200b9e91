import json

import numpy as np
import pytest
import torch
from PIL import Image

from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.augment.dataset import SegmentationDataset, train_transform
from lesionseg.data.cache import Split, _decode_mask, encode_mask
from lesionseg.data.normalize import normalize_batch
from lesionseg.data.prepare import PrepareConfig, decode_pair, prepare_dataset, train_val_indices
from lesionseg.errors import DataError
from tests.helpers import TRAIN_IMAGES, TRAIN_MASKS, lesion_pair, make_raw_tree


def test_mask_codec_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.7
    assert np.array_equal(_decode_mask(encode_mask(mask), 37, 53), mask)


def test_prepare_dataset_writes_splits_and_summary(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=10, n_test=3)
    config = PrepareConfig(size=32, val_fraction=0.2, seed=1, expected_train=10, expected_test=3, workers=0)
    summary = prepare_dataset(raw, tmp_path / "prepared", config)
    assert summary["pairs"] == {"train": 8, "val": 2, "test": 3}
    assert json.loads((tmp_path / "prepared" / "summary.json").read_text()) == summary
    train = Split.load(tmp_path / "prepared" / "train.pt")
    assert train.images.shape == (8, 32, 32, 3) and train.images.dtype == torch.uint8
    assert train.masks.shape == (8, 32, 32) and set(train.masks.unique().tolist()) <= {0, 1}
    assert train.orig_sizes.tolist() == [[48, 64]] * 8
    # Full-resolution masks survive exactly.
    _, truth = lesion_pair(int(train.ids[0][-7:]))
    assert np.array_equal(train.fullres_mask(0), truth)
    val = Split.load(tmp_path / "prepared" / "val.pt")
    assert not set(val.ids) & set(train.ids)


def test_parallel_decoding_matches_in_process(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=6, n_test=2)
    a = prepare_dataset(raw, tmp_path / "a", PrepareConfig(size=32, workers=0))
    b = prepare_dataset(raw, tmp_path / "b", PrepareConfig(size=32, workers=2))
    assert a == b
    for name in ("train", "val", "test"):
        sa, sb = Split.load(tmp_path / "a" / f"{name}.pt"), Split.load(tmp_path / "b" / f"{name}.pt")
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.masks, sb.masks) and sa.ids == sb.ids


def test_unexpected_pair_count(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=4, n_test=2)
    with pytest.raises(DataError, match=r"expected 900 training pairs, found 4"):
        prepare_dataset(raw, tmp_path / "out", PrepareConfig(size=32, expected_train=900, workers=0))
    assert not (tmp_path / "out").exists()


def test_mask_of_wrong_size_names_both_files(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=4, n_test=2)
    bad = raw / TRAIN_MASKS / TRAIN_MASKS / "ISIC_0000002_Segmentation.png"
    Image.new("L", (30, 30)).save(bad)
    with pytest.raises(
        DataError, match=r"ISIC_0000002_Segmentation.png: mask is 30x30 but its image ISIC_0000002.jpg is 64x48"
    ):
        prepare_dataset(raw, tmp_path / "out", PrepareConfig(size=32, workers=0))
    assert not (tmp_path / "out").exists()


def test_bad_image_fails_prepare_and_keeps_previous_output(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=4, n_test=2)
    prepare_dataset(raw, tmp_path / "out", PrepareConfig(size=32, workers=0))
    before = (tmp_path / "out" / "train.pt").read_bytes()
    (raw / TRAIN_IMAGES / TRAIN_IMAGES / "ISIC_0000001.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match="ISIC_0000001.jpg"):
        prepare_dataset(raw, tmp_path / "out", PrepareConfig(size=32, workers=2))
    assert (tmp_path / "out" / "train.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temporary folder left behind


def test_repairs_are_counted(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", n_train=4, n_test=2)
    mask_dir = raw / TRAIN_MASKS / TRAIN_MASKS
    Image.new("L", (64, 48)).save(mask_dir / "ISIC_0000000_Segmentation.png")
    _, mask = lesion_pair(1)
    Image.fromarray(mask.astype(np.uint8)).save(mask_dir / "ISIC_0000001_Segmentation.png")
    summary = prepare_dataset(raw, tmp_path / "out", PrepareConfig(size=32, workers=0))
    assert summary["repairs"] == {"empty_mask": 1, "zero_one": 1}


def test_decode_pair_resizes_mask_with_nearest(tmp_path):
    make_raw_tree(tmp_path, n_train=1, n_test=0)
    image = next((tmp_path / TRAIN_IMAGES).rglob("*.jpg"))
    mask = next((tmp_path / TRAIN_MASKS).rglob("*.png"))
    pair = decode_pair(image, mask, 40)
    assert pair.image.shape == (40, 40, 3) and set(np.unique(pair.mask)) <= {0, 1}


def test_train_val_split_is_seeded_and_disjoint():
    a = train_val_indices(50, 0.2, seed=3)
    assert a == train_val_indices(50, 0.2, seed=3)
    assert a != train_val_indices(50, 0.2, seed=4)
    assert len(a[1]) == 10 and not set(a[0]) & set(a[1]) and sorted(a[0] + a[1]) == list(range(50))


def test_dataset_shapes_binary_masks_and_seeded_augmentation():
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    masks = (torch.rand(6, 16, 16) > 0.5).to(torch.uint8)
    config = AugmentConfig(scale_rotate=1.0, hue_saturation=1.0)
    a = SegmentationDataset(images, masks, train_transform(config, seed=7))
    b = SegmentationDataset(images, masks, train_transform(config, seed=7))
    for i in range(6):
        (ia, ma, _), (ib, mb, _) = a[i], b[i]
        assert ia.shape == (3, 16, 16) and ma.shape == (1, 16, 16) and ia.dtype == torch.float32
        assert set(ma.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(ia, ib) and torch.equal(ma, mb)


def test_flips_move_image_and_mask_together():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :4] = 255
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 1
    t = train_transform(AugmentConfig(hflip=1.0, vflip=0.0, brightness_contrast=0.0), seed=0)
    out = t(image=image, mask=mask)
    assert out["mask"][:, 4:].all() and not out["mask"][:, :4].any()
    assert (out["image"][:, 4:, 0] > 0).all()


def test_training_normalisation_matches_inference_normalisation():
    # With nothing to augment the training transform is albumentations' Normalize alone: the same inputs as
    # inference's normalize_batch, or the model would be evaluated on other statistics than it was trained on.
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    ds = SegmentationDataset(images, torch.zeros(2, 8, 8, dtype=torch.uint8), train_transform(AugmentConfig()))
    assert torch.allclose(torch.stack([ds[i][0] for i in range(2)]), normalize_batch(images), atol=1e-5)


def test_augment_config_validates_probabilities():
    with pytest.raises(ValueError, match="hflip must be a probability"):
        AugmentConfig(hflip=1.5)


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_reduced_scale_jpeg_decoding_converts_cmyk_and_gray(tmp_path, mode):
    from lesionseg.data.prepare import model_input

    rgb = lesion_pair(0, 640, 480)[0]
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(rgb).convert(mode).save(tmp_path / "other.jpg", quality=95)
    reference = model_input(tmp_path / "rgb.jpg", 64).astype(float).mean(2)
    out = model_input(tmp_path / "other.jpg", 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float).mean(2) - reference).mean() < 6


def test_an_unreadable_prepared_split_says_what_is_wrong_with_it(tmp_path):
    (tmp_path / "train.pt").write_bytes(b"")
    with pytest.raises(DataError, match=r"train.pt: not a readable prepared split: the file is empty$"):
        Split.load(tmp_path / "train.pt")
    torch.save({"images": np.zeros(2)}, tmp_path / "val.pt")  # a numpy array: a pickled object, not a tensor
    with pytest.raises(DataError, match=r"val.pt: not a readable prepared split: it holds a pickled Python object"):
        Split.load(tmp_path / "val.pt")
