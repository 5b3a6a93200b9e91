"""External test sets: folder layouts, mask names and formats, errors, and `lesionseg evaluate`."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesionseg.cli import main as cli_main
from lesionseg.data.external import ExternalSet, _pair_external, prepare_external
from lesionseg.data.images import load_mask
from lesionseg.errors import DataError
from lesionseg.evaluation.evaluate import evaluate_model
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import load_model, make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from tests.helpers import lesion_pair


def write_set(root, names, image_dir="images", mask_dir="masks", suffix="_segmentation", ext=".jpg", size=(64, 48)):
    """Pairs of the synthetic lesion in ``root/image_dir`` and ``root/mask_dir`` (the same: masks beside)."""
    for seed, name in enumerate(names):
        image, mask = lesion_pair(seed, *size)
        (root / image_dir).mkdir(parents=True, exist_ok=True)
        (root / mask_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / image_dir / f"{name}{ext}")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_dir / f"{name}{suffix}.png")
    return root


def ids(pairing):
    return [name for name, _, _ in pairing.pairs]


def test_images_and_masks_subfolders(tmp_path):
    write_set(tmp_path, ["b", "a"])
    pairing = _pair_external(ExternalSet("clinic", tmp_path))
    assert ids(pairing) == ["a", "b"] and pairing.skipped == []
    assert pairing.pairs[0][2].name == "a_segmentation.png"


@pytest.mark.parametrize(
    ("suffix", "ext"), [("_mask", ".png"), ("_lesion", ".bmp"), ("_Segmentation", ".tif"), ("_mask", ".jpeg")]
)
def test_masks_beside_the_images(tmp_path, suffix, ext):
    write_set(tmp_path, ["x1", "x2"], ".", ".", suffix=suffix, ext=ext)
    pairing = _pair_external(ExternalSet("clinic", tmp_path))
    assert ids(pairing) == ["x1", "x2"] and pairing.skipped == []


def test_same_stem_in_a_masks_folder(tmp_path):
    write_set(tmp_path, ["p1", "p2"], "imgs", "labels", suffix="")
    pairing = _pair_external(ExternalSet("clinic", tmp_path / "imgs", tmp_path / "labels"))
    assert ids(pairing) == ["p1", "p2"]


def test_unpaired_files_are_listed_by_name(tmp_path):
    write_set(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "b_segmentation.png").unlink()
    write_set(tmp_path / "extra", ["c"])
    (tmp_path / "extra" / "masks" / "c_segmentation.png").rename(tmp_path / "masks" / "c_segmentation.png")
    pairing = _pair_external(ExternalSet("clinic", tmp_path))
    assert ids(pairing) == ["a"]
    assert pairing.skipped == ["b.jpg: no mask", "c_segmentation.png: no image"]


def test_ambiguous_masks_need_a_suffix(tmp_path):
    write_set(tmp_path, ["a"], suffix="_mask")
    write_set(tmp_path, ["a"], suffix="_lesion")
    with pytest.raises(DataError, match=r"a\.jpg: external set 'clinic': more than one mask fits.*mask_suffix"):
        _pair_external(ExternalSet("clinic", tmp_path))
    pairing = _pair_external(ExternalSet("clinic", tmp_path, mask_suffix="_lesion"))
    assert pairing.pairs[0][2].name == "a_lesion.png" and pairing.skipped == ["a_mask.png: no image"]


def test_a_set_without_pairs_names_the_set(tmp_path):
    write_set(tmp_path, ["a"], suffix="_gt")
    with pytest.raises(DataError, match=r"external set 'clinic': no image/mask pairs found"):
        _pair_external(ExternalSet("clinic", tmp_path))
    with pytest.raises(DataError, match="folder not found"):
        _pair_external(ExternalSet("clinic", tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["test", "1st", "has space", "a-b"])
def test_set_names_that_cannot_name_metrics(tmp_path, name):
    with pytest.raises(ValueError, match="external set name"):
        ExternalSet(name, tmp_path)


def test_mask_of_another_size_stops_naming_set_and_file(tmp_path):
    write_set(tmp_path, ["a", "b"])
    Image.new("L", (10, 10)).save(tmp_path / "masks" / "b_segmentation.png")
    with pytest.raises(DataError, match=r"b_segmentation\.png: external set 'clinic': mask is 10x10 but its image"):
        prepare_external(ExternalSet("clinic", tmp_path), 32)


def test_unreadable_image_is_skipped_and_listed(tmp_path):
    write_set(tmp_path, ["a", "b", "c"])
    (tmp_path / "images" / "b.jpg").write_bytes(b"not a jpeg")
    split, pairing = prepare_external(ExternalSet("clinic", tmp_path), 32, workers=2)
    assert split.ids == ["a", "c"] and len(pairing.skipped) == 1 and pairing.skipped[0].startswith("b.jpg: ")
    assert tuple(split.images.shape) == (2, 32, 32, 3) and split.orig_sizes.tolist() == [[48, 64], [48, 64]]


def test_every_file_unreadable_stops(tmp_path):
    write_set(tmp_path, ["a"])
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="external set 'clinic': no readable image/mask pair"):
        prepare_external(ExternalSet("clinic", tmp_path), 32)


@pytest.mark.parametrize("kind", ["zero_one", "palette", "red_rgb", "dark_palette"])
def test_mask_formats(tmp_path, kind):
    _, truth = lesion_pair(3)
    path = tmp_path / "m.png"
    if kind == "zero_one":
        Image.fromarray(truth.astype(np.uint8)).save(path)
    elif kind in ("palette", "dark_palette"):
        image = Image.fromarray(truth.astype(np.uint8), mode="L").convert("P")
        colour = (255, 255, 255) if kind == "palette" else (90, 0, 0)
        image.putpalette([0, 0, 0, *colour] + [0] * (256 * 3 - 6))
        image.save(path)
    else:
        rgb = np.zeros((*truth.shape, 3), np.uint8)
        rgb[truth] = (255, 0, 0)
        Image.fromarray(rgb).save(path)
    assert np.array_equal(load_mask(path).mask, truth)


@pytest.fixture()
def checkpoint(tmp_path):
    config = ModelConfig(encoder_weights="none", colour_constancy="shades_of_gray")
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(build_model(config, 0), config, 64, 1, {}), path)
    return path


def test_evaluate_command_scores_a_folder_like_the_pipeline(tmp_path, checkpoint, capsys):
    folder = write_set(tmp_path / "clinic", ["a", "b", "c"], ".", ".", suffix="_mask", ext=".png")
    out = tmp_path / "scores.csv"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--images", str(folder), "--json", "--per-image", str(out)]
    assert cli_main([*argv, "--workers", "0", "--tta"]) == 0  # a training checkpoint stores no settings
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3 and result["settings"]["tta"] is True and 0 <= result["orig_jaccard"] <= 1

    model, _ = load_model(checkpoint)
    split, _ = prepare_external(ExternalSet("clinic", folder), 64)
    expected, table = evaluate_model(model, split, InferenceSettings.from_record(result["settings"]))
    assert result["orig_jaccard"] == pytest.approx(expected["orig_jaccard"])
    written = pd.read_csv(out)
    assert list(written["id"]) == ["a", "b", "c"]
    assert written["orig_jaccard"].to_numpy() == pytest.approx(table["orig_jaccard"].to_numpy(), abs=1e-6)

    assert cli_main([*argv, "--no-tta", "--threshold", "0.7"]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert changed["settings"]["tta"] is False and changed["settings"]["threshold"] == 0.7


def test_evaluate_command_errors_name_the_file(tmp_path, checkpoint, capsys):
    write_set(tmp_path, ["a"], suffix="_gt")
    assert cli_main(["evaluate", "--checkpoint", str(checkpoint), "--images", str(tmp_path), "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lesionseg evaluate: ") and "no image/mask pairs found" in err and len(err.splitlines()) == 1


def test_compare_reads_an_external_sets_tables(tmp_path, capsys):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.5, 0.9, 40)
    for side, shift in (("a", 0.0), ("b", 0.05)):
        (tmp_path / side / "clinic").mkdir(parents=True)
        table = pd.DataFrame({"id": [f"c{i}" for i in range(40)], "orig_jaccard": scores + shift})
        table.to_csv(tmp_path / side / "clinic" / "frozen.csv", index=False)
        table.iloc[:3].to_csv(tmp_path / side / "frozen.csv", index=False)  # the test split's table: not read
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--set", "clinic", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["delta"] == pytest.approx(0.05) and result["ci95"][0] > 0


def test_drop_between_two_image_sets():
    from lesionseg.evaluation.stats import independent_difference

    rng = np.random.default_rng(1)
    test, external = rng.normal(0.86, 0.08, 100), rng.normal(0.76, 0.15, 300)
    drop = independent_difference(test, external)
    assert drop.n_a == 100 and drop.n_b == 300 and drop.ci95[1] < 0 < -drop.ci95[0]
    assert drop.delta == pytest.approx(external.mean() - test.mean())
    same = independent_difference(test[:50], test[50:])
    assert same.ci95[0] < 0 < same.ci95[1]
