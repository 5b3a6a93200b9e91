"""The zoom-in second pass: its box, the crop the model sees, and how the crop's logits go back. That every
path applies it identically: tests/test_predict_export.py (evaluate = predict) and tests/test_onnx_reference.py
(ONNX reference = predict = pyfunc)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.data.normalize import normalize_float
from lesionseg.inference.boxes import _lesion_box, box_at, zoom_box
from lesionseg.inference.logits import upsample_logits
from lesionseg.inference.settings import InferenceSettings, ZoomConfig
from lesionseg.inference.zoom import ZoomPass, compose_logits, composed_at_input_size, zoom_pass


def disc_mask(size=64, centre=(20, 40), radius=5) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_the_box_is_the_largest_component_widened_and_clipped():
    mask = disc_mask()  # rows 15-25, columns 35-45: 11 x 11
    mask[60:, :2] = True  # a smaller blob elsewhere is not the lesion
    assert _lesion_box(mask, 0.0) == (15, 35, 26, 46)
    assert _lesion_box(mask, 0.3) == (11, 31, 30, 50)  # 3.3 px more on each side, rounded outwards
    assert _lesion_box(disc_mask(centre=(2, 62)), 0.3) == (0, 54, 11, 64)  # clipped at the image's edges
    assert _lesion_box(np.zeros((64, 64), bool), 0.3) is None


def test_which_images_get_the_second_pass():
    small, large = disc_mask(radius=5), disc_mask(centre=(32, 32), radius=28)
    assert zoom_box(small, ZoomConfig(enabled=True)) == (11, 31, 30, 50)
    assert zoom_box(small, ZoomConfig(enabled=False)) is None
    assert zoom_box(large, ZoomConfig(enabled=True)) is None  # the widened box is the whole image
    assert zoom_box(large, ZoomConfig(enabled=True, margin=0.0, max_share=1.0)) == (4, 4, 61, 61)
    assert zoom_box(np.zeros((64, 64), bool), ZoomConfig(enabled=True)) is None
    with pytest.raises(ValueError, match="max_share"):
        ZoomConfig(max_share=0.0)
    with pytest.raises(ValueError, match="margin"):
        ZoomConfig(margin=-0.1)


def test_box_edges_scale_to_any_resolution():
    assert box_at((16, 32, 48, 64), 64, 128, 640) == (32, 320, 96, 640)
    assert box_at((10, 10, 11, 11), 64, 32, 32) == (5, 5, 6, 6)  # at least one pixel
    assert box_at((0, 0, 64, 64), 64, 70, 90) == (0, 0, 70, 90)


def test_composed_logits_are_the_crops_over_the_box_and_the_first_pass_elsewhere():
    torch.manual_seed(0)
    first, crops = torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64)
    zoom = ZoomPass([(16, 32, 48, 64), None], crops)
    composed = compose_logits(first, zoom, 0, 128, 640)
    expected = F.interpolate(first[:1], size=(128, 640), mode="bilinear", align_corners=False)
    inside = F.interpolate(crops[:1], size=(64, 320), mode="bilinear", align_corners=False)
    assert torch.equal(composed[..., 32:96, 320:], inside)
    outside = torch.ones(128, 640, dtype=torch.bool)
    outside[32:96, 320:] = False
    assert torch.equal(composed[0, 0][outside], expected[0, 0][outside])
    assert torch.equal(compose_logits(first, zoom, 1, 70, 90), upsample_logits(first[1:], 70, 90))
    assert torch.equal(compose_logits(first, None, 0, 70, 90), upsample_logits(first[:1], 70, 90))
    at_input = composed_at_input_size(first, zoom)
    assert torch.equal(at_input[1], first[1]) and torch.equal(at_input[0, 0, :16], first[0, 0, :16])
    assert composed_at_input_size(first, ZoomPass([None, None], crops)) is first


class Recorder(nn.Module):
    """Logits: lesion where the input's first channel is dark; remembers every input it was given."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, for the device
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return -4.0 * x[:, :1] - 2.0 + self.anchor


def test_the_model_sees_the_box_resized_to_its_input_size_with_the_same_tta():
    images = torch.full((2, 64, 64, 3), 230, dtype=torch.uint8)
    images[0][torch.from_numpy(disc_mask())] = 20  # a small dark lesion; image 1 has none
    model = Recorder()
    first = model(normalize_float(images.permute(0, 3, 1, 2).float()))
    model.seen.clear()
    second = zoom_pass(model, images, first, InferenceSettings(tta=True, zoom=ZoomConfig(enabled=True)))
    assert second.boxes == [(11, 31, 30, 50), None]
    assert len(model.seen) == 4 and all(len(x) == 1 for x in model.seen)  # identity and three flips, one image
    crop = images[0, 11:30, 31:50].permute(2, 0, 1)[None].float()
    expected = normalize_float(F.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False))
    assert torch.allclose(model.seen[0], expected)
    assert torch.equal(second.logits[1], torch.zeros(1, 64, 64))
    assert (second.logits[0] > 0).float().mean() > 0.2  # the lesion now fills a good part of the frame
