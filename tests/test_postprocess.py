import numpy as np
import pytest
import torch

from lesionseg.inference.postprocess import clean_mask, clean_masks
from lesionseg.inference.settings import PostprocessConfig

BOTH = PostprocessConfig(keep_largest=True, fill_holes=True)


def lesion_with_blob_and_hole():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # the lesion
    mask[6, 6] = False  # a hole in it
    mask[16:18, 16:18] = True  # a stray blob
    return mask


def test_keep_largest_drops_stray_blobs_only():
    mask = lesion_with_blob_and_hole()
    out = clean_mask(mask, PostprocessConfig(keep_largest=True))
    assert not out[16:18, 16:18].any() and out.sum() == 99 and not out[6, 6]


def test_fill_holes_fills_enclosed_background_only():
    mask = lesion_with_blob_and_hole()
    out = clean_mask(mask, PostprocessConfig(fill_holes=True))
    assert out[6, 6] and out[16:18, 16:18].all() and out.sum() == mask.sum() + 1


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    mask[5, 0] = True
    assert clean_mask(mask, PostprocessConfig(keep_largest=True)).sum() == 3


@pytest.mark.parametrize("config", [PostprocessConfig(), BOTH])
def test_empty_mask_stays_empty_and_off_is_identity(config):
    assert not clean_mask(np.zeros((5, 5), dtype=bool), config).any()
    mask = lesion_with_blob_and_hole()
    if not config.active:
        assert np.array_equal(clean_mask(mask, config), mask)


def test_batch_version_matches_single_masks():
    masks = torch.from_numpy(np.stack([lesion_with_blob_and_hole(), np.zeros((20, 20), dtype=bool)]))[:, None]
    out = clean_masks(masks, BOTH)
    assert out.shape == masks.shape and out.dtype == torch.bool
    assert np.array_equal(out[0, 0].numpy(), clean_mask(masks[0, 0].numpy(), BOTH)) and not out[1].any()
