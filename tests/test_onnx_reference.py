"""The torch-free ONNX reference (lesionseg.inference.onnx_reference) against the torch path: predict_files (via
lesionseg predict) and the pyfunc give the same quality, review flag and mask."""

import copy
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lesionseg.cli import main
from lesionseg.data.images import model_input
from lesionseg.data.normalize import normalize_batch
from lesionseg.errors import DataError
from lesionseg.inference import onnx_reference
from lesionseg.inference.exported import package_model
from lesionseg.inference.logits import _plain_logits, logits_function
from lesionseg.inference.quality import UNCERTAIN_MARGIN
from lesionseg.inference.quality import mask_quality as torch_quality
from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
from lesionseg.inference.zoom import zoom_pass
from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig
from lesionseg.serving.export import _predict_masks_with_quality, export_onnx
from tests.helpers import REPO, lesion_pair, stretched_model

pytest.importorskip("onnxruntime")
SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic lesion photos: JPEGs at 90x70 (upsampled masks) and 300x200 (JPEG draft decoding), a 64x64 PNG
    (the model's size: no resize) and a grayscale PNG."""
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(5):
        Image.fromarray(lesion_pair(seed, 90, 70)[0]).save(folder / f"a{seed}.jpg", quality=95)
    Image.fromarray(lesion_pair(5, 300, 200)[0]).save(folder / "large.jpg", quality=90)
    Image.fromarray(lesion_pair(6, SIZE, SIZE)[0]).save(folder / "exact.png")
    Image.fromarray(lesion_pair(7, 80, 100)[0][..., 0]).save(folder / "gray.png")
    return sorted(folder.iterdir())


def checkpoint(images, folder, model_config=None, lesion_share=None):
    """A stretched random model's training checkpoint (64 px) and its uint8 inputs for ``images``."""
    pixels = np.stack([model_input(p, SIZE) for p in images])
    model = stretched_model(pixels, model_config, lesion_share)
    save_checkpoint(make_checkpoint(model, model_config or ModelConfig("none"), SIZE, 1, {}), folder / "train.pt")
    return model, pixels


@pytest.mark.parametrize(("tta", "zoom"), [(False, False), (True, False), (True, True)], ids=["plain", "tta", "zoom"])
def test_reference_matches_predict_and_the_pyfunc(images, tmp_path, tta, zoom):
    # With the zoom: smaller predicted lesions (about 20% of the pixels), so that boxes vary in size and some
    # images get the second pass and some do not (both branches are compared). A random network's quality
    # on its zoomed crops is 0 throughout, so there the masks carry the comparison.
    model, pixels = checkpoint(images, tmp_path, lesion_share=0.2 if zoom else None)
    cleanup, zoomed = PostprocessConfig(keep_largest=True, fill_holes=True), ZoomConfig(enabled=zoom, max_share=0.45)
    plain = InferenceSettings(tta=tta, postprocess=cleanup, zoom=zoomed)
    torch_path = _predict_masks_with_quality(model, pixels, plain)
    if zoom:
        forward = logits_function(plain)
        first = forward(model, normalize_batch(torch.from_numpy(pixels)))
        boxes = zoom_pass(model, torch.from_numpy(pixels), first, plain).boxes
        assert 0 < sum(box is not None for box in boxes) < len(boxes)
        assert not np.array_equal(
            torch_path["mask"], _predict_masks_with_quality(model, pixels, replace(plain, zoom=ZoomConfig()))["mask"]
        )
    else:
        assert np.ptp(torch_path["quality"]) > 0 and (torch_path["quality"] < 1).any()  # varied: the test can fail
    settings = replace(plain, review_threshold=float(np.median(torch_path["quality"])))
    save_checkpoint(package_model([tmp_path / "train.pt"], settings), tmp_path / "model.pt")
    export_onnx(tmp_path / "model.pt", tmp_path / "model.onnx")
    reference = onnx_reference.OnnxModel(tmp_path / "model.onnx")
    assert reference.settings == settings and reference.size == SIZE

    # Model-size arrays: the pyfunc's masks, quality and review flags.
    arrays = [reference.predict(p) for p in pixels]
    expected = _predict_masks_with_quality(model, pixels, settings)
    assert np.abs(np.array([a.quality for a in arrays]) - expected["quality"]).max() < 1e-4
    assert [a.review for a in arrays] == expected["review"].tolist()
    assert zoom or 0 < sum(expected["review"]) < len(pixels)
    assert all(np.array_equal(a.mask, m.astype(bool)) for a, m in zip(arrays, expected["mask"]))

    # Files at their original sizes: lesionseg predict's quality.csv and masks.
    out = tmp_path / "predicted"
    args = ["predict", "--quiet", "--checkpoint", str(tmp_path / "model.pt"), "--output", str(out)]
    assert main([*args, "--batch-size", "3", *map(str, images)]) == 0
    table = pd.read_csv(out / "quality.csv")
    onnx_model = onnx_reference.OnnxModel(tmp_path / "model.onnx")
    files = [onnx_model.predict(image) for image in images]
    assert np.abs(table["quality"].to_numpy() - [f.quality for f in files]).max() < 1e-4
    assert table["review"].tolist() == ["yes" if f.review else "no" for f in files]
    for path, prediction in zip(images, files):
        written = np.asarray(Image.open(out / f"{path.stem}_mask.png")) > 127
        assert prediction.mask.shape == written.shape == Image.open(path).size[::-1]
        assert np.array_equal(prediction.mask, written), path.name


def test_colour_constancy_is_inside_the_graph(images, tmp_path):
    """A shades-of-gray model: the graph applies the correction, the reference adds nothing and still matches."""
    model, pixels = checkpoint(images, tmp_path, ModelConfig("none", colour_constancy="shades_of_gray"))
    export_onnx(tmp_path / "train.pt", tmp_path / "model.onnx")
    reference = onnx_reference.OnnxModel(tmp_path / "model.onnx")
    predictions = [reference.predict(p) for p in pixels]
    expected = _predict_masks_with_quality(model, pixels, InferenceSettings())
    assert np.abs(np.array([p.quality for p in predictions]) - expected["quality"]).max() < 1e-4
    assert all(np.array_equal(p.mask, m.astype(bool)) for p, m in zip(predictions, expected["mask"]))
    # The graph does correct the colours: the same network without the step gives other logits.
    bare = copy.deepcopy(model)
    bare.colour = torch.nn.Identity()
    uncorrected = _plain_logits(bare, normalize_batch(torch.from_numpy(pixels[:1])))[0, 0].numpy()
    assert np.abs(reference.logits(pixels[0]) - uncorrected).max() > 0.1


def test_upsampling_and_quality_are_torchs():
    rng = np.random.default_rng(0)
    for shape in ((70, 90), (31, 200), (64, 64), (767, 1022)):
        logits = torch.from_numpy(rng.normal(0, 3, (1, 1, SIZE, SIZE)).astype(np.float32))
        expected = F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        actual = onnx_reference.upsample_logits(logits[0, 0].numpy(), *shape)
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)  # float32 rounding (a few ulp)
    assert onnx_reference.UNCERTAIN_MARGIN == UNCERTAIN_MARGIN
    maps = np.concatenate([rng.uniform(0, 1, (20, 32, 32)), np.full((1, 32, 32), 0.3)]).astype(np.float32)
    maps[:10] = np.round(maps[:10])
    maps[:10, :4] = 0.5  # masks of a few uncertain rows
    expected = torch_quality(torch.from_numpy(maps)[:, None], 0.4).numpy()
    assert [onnx_reference.mask_quality(m, 0.4) for m in maps] == pytest.approx(expected, abs=1e-6)
    assert 0 < expected[:10].min() < 1 and expected[-1] == 0  # some partial scores, and an empty mask


def test_bad_model_files_are_named(images, tmp_path):
    import onnx

    checkpoint(images, tmp_path)
    export_onnx(tmp_path / "train.pt", tmp_path / "model.onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(DataError, match=r"bare\.onnx: no lesionseg\.preprocessing, lesionseg\.inference metadata"):
        onnx_reference.OnnxModel(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk\.onnx: not a readable ONNX model"):
        onnx_reference.OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(DataError, match=r"missing\.onnx: file not found"):
        onnx_reference.OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(DataError, match=r"nothing\.jpg"):
        onnx_reference.OnnxModel(tmp_path / "model.onnx").predict(tmp_path / "nothing.jpg")


def test_reference_runs_without_torch(images, tmp_path):
    checkpoint(images, tmp_path)
    export_onnx(tmp_path / "train.pt", tmp_path / "model.onnx")
    code = (
        "import sys; from lesionseg.inference.onnx_reference import OnnxModel; "
        f"p = OnnxModel({str(tmp_path / 'model.onnx')!r}).predict({str(images[0])!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(p.mask.shape, p.quality)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(70, 90) ")
