"""`lesionseg calibrate`: a clinic's annotation style from a few of its masks (tight, loose, the same)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn

from lesionseg.cli import main as cli_main
from lesionseg.data.external import ExternalSet, prepare_external
from lesionseg.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from lesionseg.evaluation.calibrate import (
    CalibrationDraw,
    _best_column,
    _draw_calibration,
    _leave_one_out,
    _moved_review_threshold,
    calibrate,
    calibrated_external,
    threshold_search,
)
from lesionseg.evaluation.evaluate import evaluate_model
from lesionseg.experiments.model_metrics import ModelMetrics
from lesionseg.inference.exported import stored_settings
from lesionseg.inference.quality import needs_review
from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
from lesionseg.model.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.report.comparison_table import _CALIBRATION_COLUMN, comparison_table
from lesionseg.serving.model_card import card_markdown, model_card
from tests.helpers import lesion_pair

GRID = np.round(np.arange(0.1, 0.91, 0.02), 2)  # coarser than the command's: the tests stay fast
CLEANUP = PostprocessConfig(keep_largest=True, fill_holes=True)
STORED = InferenceSettings(postprocess=CLEANUP, review_threshold=0.9)


class DarknessModel(nn.Module):
    """A model whose output we know: the logit is ``gain`` times how much darker than the midpoint between the
    synthetic lesion and skin (:func:`tests.helpers.lesion_pair`) the image is, blurred (Gaussian, ``sigma``
    model-input pixels). Its probability falls smoothly across the lesion's edge and crosses 0.5 about where
    the synthetic mask's edge is, like a trained model's on masks drawn the way it was trained on."""

    def __init__(self, sigma: float = 2.0, gain: float = 10.0):
        super().__init__()
        radius = int(3 * sigma)
        x = torch.arange(-radius, radius + 1.0)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        self.kernel = nn.Parameter((g[:, None] * g[None, :])[None, None], requires_grad=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.gain = gain
        # The grey level halfway between the lesion's (110, 70, 50) and the skin's (220, 170, 150).
        self.midpoint = (220 + 170 + 150 + 110 + 70 + 50) / 6 / 255

    def forward(self, x):
        gray = (x * self.std + self.mean).mean(1, keepdim=True)
        r = self.kernel.shape[-1] // 2
        return self.gain * (self.midpoint - F.conv2d(F.pad(gray, (r, r, r, r), mode="replicate"), self.kernel))


def clinic(folder, seeds, offset: int = 0, jitter: int = 1):
    """A clinic's labelled folder (masks beside the images): the synthetic lesions, each mask grown by
    ``offset`` pixels (negative: shrunk; a tight annotator) plus a per-image annotator's jitter of up to
    ``jitter`` pixels either way; returned prepared at 64 px."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seeds[0])
    for seed in seeds:
        image, mask = lesion_pair(seed, 80, 60)
        grow = offset + int(rng.integers(-jitter, jitter + 1))
        if grow < 0:
            mask = ndimage.binary_erosion(mask, iterations=-grow)
        elif grow > 0:
            mask = ndimage.binary_dilation(mask, iterations=grow)
        Image.fromarray(image).save(folder / f"case{seed}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"case{seed}_mask.png")
    return prepare_external(ExternalSet("clinic", folder), 64)[0]


def held_out_iou(model, split, settings):
    return evaluate_model(model, split, settings)[0]["orig_jaccard"]


@pytest.fixture(scope="module")
def model():
    return DarknessModel().eval()


@pytest.mark.parametrize("offset, direction", [(-2, 1), (2, -1)], ids=["tight annotator", "loose annotator"])
def test_the_threshold_follows_the_annotators_style(tmp_path, model, offset, direction):
    calibration_set = clinic(tmp_path / "calibration", list(range(10)), offset)
    result = calibrate(model, calibration_set, STORED, GRID)
    assert result.adopted and result.held_out.ci95[0] > 0
    assert np.sign(result.after.threshold - STORED.threshold) == direction  # tight: higher, loose: lower
    assert result.in_sample.delta > 0.02 and result.iou_best.mean() > result.iou_before.mean()
    # The clean-up and the rest of the settings stay; only the threshold (and the review threshold) move.
    assert (result.after.postprocess, result.after.tta, result.after.zoom) == (CLEANUP, False, ZoomConfig())
    # Images the threshold was not chosen on, drawn the same way, gain too.
    rest = clinic(tmp_path / "rest", list(range(100, 110)), offset)
    assert held_out_iou(model, rest, result.after) > held_out_iou(model, rest, STORED) + 0.02


def test_a_folder_of_the_training_style_keeps_the_stored_settings(tmp_path, model):
    result = calibrate(model, clinic(tmp_path / "same", list(range(20, 30))), STORED, GRID)
    assert not result.adopted and result.held_out.ci95[0] <= 0
    assert result.after == STORED


def test_the_search_scores_each_threshold_as_evaluation_does(tmp_path, model):
    """With TTA and the zoom-in second pass: the stored threshold's column is evaluate's per-image IoU (the zoom's
    crops are placed at that threshold); without the zoom every column is."""
    split = clinic(tmp_path / "c", [40, 41, 42], -1)
    zoomed = InferenceSettings(tta=True, postprocess=CLEANUP, zoom=ZoomConfig(enabled=True, max_share=1.0))
    search = threshold_search(model, split, zoomed, GRID)
    _, table = evaluate_model(model, split, zoomed)
    assert table["zoomed"].all()
    np.testing.assert_allclose(search.iou[:, search.stored], table["orig_jaccard"], atol=1e-9)
    np.testing.assert_allclose(search.quality, table["quality"], atol=1e-6)
    plain = threshold_search(model, split, STORED, GRID)
    column = int(np.flatnonzero(np.isclose(plain.thresholds, 0.7))[0])
    _, table = evaluate_model(model, split, InferenceSettings(threshold=0.7, postprocess=CLEANUP))
    np.testing.assert_allclose(plain.iou[:, column], table["orig_jaccard"], atol=1e-9)


def test_best_threshold_and_leave_one_out():
    iou = np.array([[0.5, 0.7, 0.7, 0.6], [0.5, 0.6, 0.8, 0.6], [0.9, 0.5, 0.5, 0.6]])
    assert _best_column(iou, stored=0) == 2  # means 0.633, 0.6, 0.667, 0.6
    assert _best_column(iou[:, :2], stored=0) == 0  # means 0.633, 0.6
    assert _best_column(np.ones((2, 4)), stored=2) == 2  # ties: no move
    # Each image at the column the others choose: without image 0 column 0 (mean 0.7), without 1 column 0 (0.7),
    # without 2 column 2 (0.75): every image scores below its own best, the optimism the guard takes out.
    np.testing.assert_allclose(_leave_one_out(iou, stored=0), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(_leave_one_out(iou, stored=3), [0.5, 0.5, 0.5])


def test_the_review_threshold_keeps_the_share_it_flagged():
    before, after = np.array([0.2, 0.4, 0.6, 0.8, 0.95]), np.array([0.5, 0.1, 0.7, 0.9, 0.3])
    moved = _moved_review_threshold(before, after, 0.5)  # flagged 2 of 5 before
    assert needs_review(after, moved).sum() == 2 and needs_review(after, moved)[[1, 4]].all()
    assert _moved_review_threshold(before, after, None) is None
    assert _moved_review_threshold(before, after, 0.99) == 1.0  # every mask flagged stays every mask flagged


def test_the_moved_review_threshold_flags_as_many_calibration_masks(tmp_path, model):
    split = clinic(tmp_path / "c", list(range(50, 60)), -2)
    stored = InferenceSettings(postprocess=CLEANUP, review_threshold=0.85)
    result = calibrate(model, split, stored, GRID)
    assert result.adopted
    flagged_before = needs_review(threshold_search(model, split, stored, GRID).quality, 0.85).sum()
    _, table = evaluate_model(model, split, InferenceSettings(threshold=result.after.threshold, postprocess=CLEANUP))
    assert needs_review(table["quality"], result.after.review_threshold).sum() == flagged_before


def test_calibration_needs_a_few_images(tmp_path, model):
    with pytest.raises(ValueError, match="at least 3"):
        calibrate(model, clinic(tmp_path / "c", [1, 2]), STORED, GRID)


@pytest.fixture()
def checkpoint(tmp_path):
    config = ModelConfig(encoder_weights="none")
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint({**make_checkpoint(build_model(config, 0), config, 64, 1, {}), "inference": STORED.record()}, path)
    return path


def test_the_command_writes_a_model_that_every_path_reads(tmp_path, checkpoint, capsys):
    folder = tmp_path / "clinic"
    clinic(folder, [1, 2, 3, 4], -2)
    card = model_card(
        name="finetune_all",
        checkpoint=read_checkpoint(checkpoint),
        parameter_counts={},
        recipe={},
        data={},
        results={},
        provenance={},
    )
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    out = tmp_path / "calibrated.pt"
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--images", str(folder), "--output", str(out)]
    assert cli_main([*argv, "--workers", "0", "--card", str(tmp_path / "model_card.json")]) == 0
    printed = capsys.readouterr().out
    assert "4 image(s)" in printed and "held out" in printed and f"wrote {out}" in printed

    calibrated, original = read_checkpoint(out), read_checkpoint(checkpoint)
    record = calibrated["calibration"]
    assert record["n"] == 4 and record["ids"] == ["case1", "case2", "case3", "case4"]
    assert record["images"] == str(folder.resolve()) and record["before"] == STORED.record()
    assert ("kept the stored settings" in printed) == (not record["adopted"])
    assert stored_settings(calibrated).record() == record["after"]  # where predict, the pyfunc and ONNX read
    assert all(torch.equal(calibrated["state_dict"][k], v) for k, v in original["state_dict"].items())

    assert cli_main(["evaluate", "--checkpoint", str(out), "--images", str(folder), "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == record["after"]

    page = (tmp_path / "calibrated_card.md").read_text()
    assert "## Calibration" in page and "case1, case2, case3, case4" in page and str(folder.resolve()) in page
    assert json.loads((tmp_path / "calibrated_card.json").read_text())["calibration"] == record
    assert "## Calibration" in card_markdown(model_card(**{**_card_args(), "checkpoint": calibrated}))


def _card_args():
    return dict(name="m", checkpoint=None, parameter_counts={}, recipe={}, data={}, results={}, provenance={})


def test_the_command_stores_an_adopted_threshold(tmp_path, checkpoint, model, capsys):
    """What the command writes when the threshold moves, with the model whose output we control: the record's
    settings are the ones stored, and the page says what changed."""
    from lesionseg.evaluation.calibrate import calibrated_model

    folder = tmp_path / "clinic"
    split = clinic(folder, list(range(10)), -2)
    result = calibrate(model, split, STORED, GRID)
    package = calibrated_model(read_checkpoint(checkpoint), result, folder)
    assert package["inference"] == package["calibration"]["after"] and package["inference"]["threshold"] > 0.5
    page = card_markdown(model_card(**{**_card_args(), "checkpoint": package}))
    assert f"stores threshold {result.after.threshold:g} (was 0.5)" in page
    onnx = pytest.importorskip("onnx")
    save_checkpoint(package, tmp_path / "calibrated.pt")
    assert (
        cli_main(["export", "--checkpoint", str(tmp_path / "calibrated.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    )
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert metadata["lesionseg.inference"] == package["inference"]
    assert metadata["lesionseg.calibration"] == package["calibration"]


@pytest.mark.parametrize(
    "problem, message",
    [
        ("no pairs", "no image/mask pairs found"),
        ("two images", "calibration needs at least 3 labelled images, found 2"),
        ("bad card", "not a readable model card"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, checkpoint, capsys, problem, message):
    folder = tmp_path / "clinic"
    clinic(folder, [1, 2] if problem == "two images" else [1, 2, 3])
    if problem == "no pairs":
        for mask in folder.glob("*_mask.png"):
            mask.rename(mask.with_name(mask.name.replace("_mask", "_gt")))
    card = tmp_path / "card.json"
    card.write_text("{not json" if problem == "bad card" else json.dumps({"model": {}}))
    out = tmp_path / "calibrated.pt"
    out.write_bytes(b"an earlier file")
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--images", str(folder), "--output", str(out)]
    assert cli_main([*argv, "--workers", "0", "--card", str(card)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("lesionseg calibrate: ") and message in err[-1]
    assert str(card if problem == "bad card" else folder) in err[-1]
    assert out.read_bytes() == b"an earlier file" and not (tmp_path / "calibrated_card.md").exists()


def test_the_pipeline_scores_a_set_as_trained_and_calibrated_on_its_other_images(tmp_path, model):
    """``evaluate.calibrate.clinic: 6``: six images drawn with the seed calibrate, the other six alone are scored,
    as trained and as calibrated (paired on the same images); the comparison table shows the paired change."""
    split = clinic(tmp_path / "clinic", list(range(50, 62)), -2)
    draw = CalibrationDraw(6, seed=3)
    chosen, held_out = _draw_calibration(split, draw)
    again, _ = _draw_calibration(split, draw)
    assert chosen.ids == again.ids and chosen.ids != _draw_calibration(split, CalibrationDraw(6, seed=4))[0].ids
    assert sorted(chosen.ids + held_out.ids) == sorted(split.ids) and len(held_out) == 6
    metrics, tables = calibrated_external(model, "clinic", split, draw, STORED)
    assert list(metrics) == list(tables) == ["clinic", "clinic_calibrated"]
    for table in tables.values():  # no calibration image is scored; both settings on the same images
        assert list(table["id"]) == held_out.ids and not set(table["id"]) & set(chosen.ids)
    trained, calibrated = metrics["clinic"], metrics["clinic_calibrated"]
    assert trained["n"] == calibrated["n"] == 6 and calibrated["calibration_images"] == 6
    assert calibrated["adopted"] == 1 and calibrated["threshold"] > STORED.threshold  # the tight annotator's
    assert calibrated["orig_jaccard"] > trained["orig_jaccard"] + 0.02 and "review_flagged" in calibrated
    # The calibrated model is what `lesionseg calibrate` on those six images writes.
    assert calibrate(model, chosen, STORED).after.threshold == calibrated["threshold"]
    record = ModelMetrics(test={"orig_jaccard": 0.8}, external=metrics)
    table = comparison_table({"m": record}, {"m": tables["clinic"]}, {k: {"m": t} for k, t in tables.items()})
    change = table[f"clinic_calibrated {_CALIBRATION_COLUMN}"][0]
    assert float(change.split()[0]) == pytest.approx(calibrated["orig_jaccard"] - trained["orig_jaccard"], abs=6e-4)
