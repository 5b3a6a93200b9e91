"""Colour constancy inside the model, and the camera augmentations of the CPU loader."""

import numpy as np
import pytest
import torch

from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.augment.batch_augment import _augment_batch
from lesionseg.augment.dataset import train_transform
from lesionseg.data.normalize import normalize_batch
from lesionseg.model.checkpoint import load_model, make_checkpoint, save_checkpoint
from lesionseg.model.colour import _ShadesOfGray, build_colour_constancy
from lesionseg.model.model import ModelConfig, build_model, count_parameters
from lesionseg.training.train import TrainConfig
from tests.helpers import lesion_pair


def pixel_means(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (x * std + mean).mean(dim=(2, 3))


def test_neutral_image_is_unchanged():
    image = torch.from_numpy(lesion_pair(1)[0]).float().mean(-1, keepdim=True).expand(-1, -1, 3).round()
    x = normalize_batch(image.to(torch.uint8)[None])
    assert torch.allclose(_ShadesOfGray(6)(x), x, atol=1e-5)


@pytest.mark.parametrize("method", ["shades_of_gray", "gray_world"])
def test_a_colour_cast_is_removed(method):
    image, _ = lesion_pair(2)
    cast = np.clip(image * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)  # a warm illuminant
    step = build_colour_constancy(method)
    plain = pixel_means(normalize_batch(torch.from_numpy(image)[None]))
    corrected = pixel_means(step(normalize_batch(torch.from_numpy(cast)[None])))
    reference = pixel_means(step(normalize_batch(torch.from_numpy(image)[None])))
    # After the correction the cast image has the corrected original's colour balance (chromaticity;
    # the overall brightness is the cast image's own).
    assert torch.allclose(corrected / corrected.sum(), reference / reference.sum(), atol=0.01)
    assert (plain - pixel_means(normalize_batch(torch.from_numpy(cast)[None]))).abs().max() > 0.05


def test_correction_is_per_image_and_flip_invariant():
    images = torch.from_numpy(np.stack([lesion_pair(s)[0] for s in range(3)]))
    x = normalize_batch(images)
    step = _ShadesOfGray(6)
    together = step(x)
    assert torch.allclose(together[1:2], step(x[1:2]), atol=1e-6)
    assert torch.allclose(step(x.flip(-1)).flip(-1), together, atol=1e-6)


def test_colour_constancy_keeps_parameter_counts_and_checkpoint_round_trip(tmp_path):
    config = ModelConfig(encoder_weights="none", colour_constancy="shades_of_gray", minkowski_p=4.0)
    model = build_model(config, unfreeze=0)
    assert count_parameters(model) == {"total": 6_995_457, "trainable": 4_771_585, "frozen": 2_223_872}
    save_checkpoint(make_checkpoint(model, config, 64, 1, {}), tmp_path / "m.pt")
    loaded, checkpoint = load_model(tmp_path / "m.pt")
    assert checkpoint["model_config"]["colour_constancy"] == "shades_of_gray"
    assert isinstance(loaded.colour, _ShadesOfGray) and loaded.colour.p == 4.0
    x = torch.randn(2, 3, 64, 64)
    model.eval(), loaded.eval()
    assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_old_checkpoints_without_the_setting_load_as_none(tmp_path):
    config = ModelConfig(encoder_weights="none")
    checkpoint = make_checkpoint(build_model(config, 0), config, 64, 1, {})
    del checkpoint["model_config"]["colour_constancy"], checkpoint["model_config"]["minkowski_p"]
    save_checkpoint(checkpoint, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt")
    assert isinstance(model.colour, torch.nn.Identity)


@pytest.mark.parametrize(("field", "value"), [("colour_constancy", "retinex"), ("minkowski_p", 0.5)])
def test_bad_colour_settings(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(encoder_weights="none", **{field: value})


def test_camera_augmentations_change_pixels_not_masks():
    image, mask = lesion_pair(4)
    config = AugmentConfig(hflip=0, vflip=0, brightness_contrast=0, gamma=1, blur=1, noise=1, jpeg=1)
    out = train_transform(config, seed=0)(image=image, mask=mask.astype(np.uint8))
    plain = train_transform(AugmentConfig(hflip=0, vflip=0, brightness_contrast=0), seed=0)(image=image)
    assert np.array_equal(out["mask"], mask.astype(np.uint8))
    assert np.abs(out["image"] - plain["image"]).mean() > 0.05


def test_scale_limit_widens_the_affine():
    image, mask = lesion_pair(5, 64, 64)
    config = AugmentConfig(hflip=0, vflip=0, brightness_contrast=0, scale_rotate=1, rotate_limit=0, scale_limit=0.5)
    areas = [train_transform(config, seed=s)(image=image, mask=mask.astype(np.uint8))["mask"].sum() for s in range(20)]
    ratio = np.array(areas) / mask.sum()
    assert ratio.min() < 0.6 and ratio.max() > 1.5  # scales 0.5-1.5 in each axis


def test_camera_augmentations_run_on_the_device_path_too():
    config = AugmentConfig(gamma=1, blur=1, noise=1, jpeg=1)
    images = torch.full((2, 16, 16, 3), 128, dtype=torch.uint8)
    out, masks = _augment_batch(images, torch.zeros(2, 16, 16, dtype=torch.uint8), config)
    assert out.shape == (2, 3, 16, 16) and masks.shape == (2, 1, 16, 16)
    assert not torch.equal(out[0], out[1])  # each image draws its own gamma, noise and quality
    assert TrainConfig(augment_on="device", augment=config).augment_on == "device"


@pytest.mark.parametrize("field", ["gamma", "blur", "noise", "jpeg"])
def test_camera_probabilities_are_checked(field):
    with pytest.raises(ValueError, match=f"{field} must be a probability"):
        AugmentConfig(**{field: 1.5})


def test_onnx_graph_applies_the_colour_constancy(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import json

    from lesionseg.serving.export import export_onnx

    config = ModelConfig(encoder_weights="none", colour_constancy="shades_of_gray")
    model = build_model(config, unfreeze=0).eval()
    save_checkpoint(make_checkpoint(model, config, 64, 1, {}), tmp_path / "m.pt")
    export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = normalize_batch(torch.from_numpy(np.stack([lesion_pair(s, 64, 64)[0] for s in range(2)])))
    (logits,) = session.run(None, {"image": x.numpy()})
    assert np.abs(logits - model(x).detach().numpy()).max() < 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["lesionseg.colour_constancy"])
    assert meta == {"colour_constancy": "shades_of_gray", "minkowski_p": 6.0}
