"""Recipes: params.yaml is the default, recipes/reference.yaml the reference report's, each written once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from lesionseg.cli import main
from lesionseg.recipes import dvc_options, flatten, load_recipe, override_value, recipe_path

REPO = Path(__file__).resolve().parents[1]
PARAMS = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
REFERENCE = load_recipe(REPO / "recipes" / "reference.yaml")
# Keys of params.yaml that are not part of a recipe: where the data and weights come from, seeds, how and where
# to compute, bookkeeping. Everything else is a recipe key, which every recipe file must set.
NOT_RECIPE = ("download.", "data.", "runtime.", "cv.", "report.", "export.", "mlflow.")
NOT_RECIPE_KEYS = {
    "train.encoder_weights", "train.seed", "evaluate.batch_size", "evaluate.external",
    "evaluate.mask_suffix", "evaluate.review_fraction", "evaluate.calibrate", "evaluate.calibrate_seed",
}  # fmt: skip
RECIPE_KEYS = {"data.size"} | {k for k in PARAMS if not k.startswith(NOT_RECIPE) and k not in NOT_RECIPE_KEYS}


def test_the_reference_recipe_sets_every_recipe_key_of_params_yaml():
    assert set(REFERENCE) == RECIPE_KEYS, (
        f"recipes/reference.yaml lacks {sorted(RECIPE_KEYS - set(REFERENCE))}, "
        f"has keys params.yaml does not treat as recipe keys: {sorted(set(REFERENCE) - RECIPE_KEYS)}"
    )


def test_the_reference_recipe_is_the_reference_reports():
    report = {
        "data.size": 128,  # resize to 128x128
        "augment.hflip": 0.5,  # horizontal and vertical flips (p=0.5)
        "augment.vflip": 0.5,
        "augment.brightness_contrast": 0.5,  # random brightness/contrast
        "finetune.unfreeze": [1, 2, "all"],  # last stage; two stages; all
        "train.lr": 0.001,
        "finetune.lr": 0.0001,
        "train.epochs": 25,  # both phases: finetune states only its rate, the rest is train's
        "train.batch_size": 16,
        "model.colour_constancy": "none",
    }
    assert {k: REFERENCE[k] for k in report} == report
    assert [k for k in REFERENCE if k.startswith("finetune.")] == ["finetune.unfreeze", "finetune.lr"]
    # Nothing else: no other augmentation, the DiceBCE loss unweighted, Adam at a constant rate, the plain model.
    for name in ("scale_rotate", "hue_saturation", "gamma", "blur", "noise", "jpeg"):
        assert REFERENCE[f"augment.{name}"] == 0.0, name
    assert REFERENCE["train.bce_weight"] == REFERENCE["train.dice_weight"] == 1.0
    assert REFERENCE["train.optimizer"] == "adam" and REFERENCE["train.scheduler"] == "constant"
    assert REFERENCE["train.ema_decay"] == 0.0 and REFERENCE["train.weight_decay"] == 0.0
    assert not any(REFERENCE[f"evaluate.{k}"] for k in ("tta", "keep_largest", "fill_holes"))


def test_the_default_differs_from_the_reference_only_in_augmentation_and_inference():
    differing = sorted(k for k in RECIPE_KEYS if PARAMS[k] != REFERENCE[k])
    assert differing and all(k.startswith(("augment.", "evaluate.")) for k in differing), differing


def test_recipe_options_through_dvcs_own_parser_give_the_recipe(tmp_path, capsys):
    """What `dvc exp run $(lesionseg recipe reference)` does to params.yaml, with DVC's override parser."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert main(["recipe", "reference", "--recipes", str(REPO / "recipes")]) == 0
    words = capsys.readouterr().out.split()
    assert words[::2] == ["-S"] * len(REFERENCE)
    apply_overrides(str(tmp_path / "params.yaml"), words[1::2])
    applied = flatten(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert {k: applied[k] for k in REFERENCE} == REFERENCE
    assert {k: v for k, v in applied.items() if k not in REFERENCE} == {
        k: v for k, v in PARAMS.items() if k not in REFERENCE
    }


@pytest.mark.parametrize(
    "value, text", [(True, "true"), (None, "null"), (0.0001, "0.0001"), ([1, 2, "all"], "[1,2,all]"), ("adam", "adam")]
)
def test_override_values(value, text):
    assert override_value(value) == text


def test_bad_recipes_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such recipe.*reference"):
        recipe_path("nope", REPO / "recipes")
    with pytest.raises(ValueError, match="without spaces"):
        dvc_options({"model.colour_constancy": "shades of gray"})
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml: a recipe is a mapping"):
        load_recipe(tmp_path / "bad.yaml")


def test_a_recipe_can_leave_sections_at_the_default(capsys):
    """The reference training with the default inference: `lesionseg recipe reference --except evaluate`."""
    assert main(["recipe", "reference", "--recipes", str(REPO / "recipes"), "--except", "evaluate"]) == 0
    keys = [word.split("=")[0] for word in capsys.readouterr().out.split()[1::2]]
    assert keys == [k for k in REFERENCE if not k.startswith("evaluate.")] and "augment.gamma" in keys


def test_make_reproduce_report_runs_the_recipe_with_cv_then_records_and_renders():
    # The README's one command for the report's table: the experiment, its record, the pages rendered from it.
    shown = subprocess.run(
        ["make", "-n", "reproduce-report", "REPORT_DATA=-S data.expected_test=339"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    run = shown.replace("\\\n", " ")
    assert "dvc exp run -n official-reference $(.venv/bin/lesionseg recipe reference)" in run
    assert "-S cv.folds=5 -S data.expected_test=339" in run
    save, render = run.index("scripts/results.py save official-reference"), run.index("scripts/results.py render")
    assert run.index("dvc exp run") < save < render
