"""The model card's facts read from the pipeline's records (lesionseg.serving.card_facts), on small files
written here and random-weight checkpoints at 64 px."""

import json

import pandas as pd
import pytest

from lesionseg.errors import DataError
from lesionseg.inference.exported import package_model
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.serving.card_facts import cv_summary, exported_tables, recipe_of, review_by_evaluation, training_data


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A frozen (level 0) and a fine-tuned (level all) checkpoint, each with its phase's config and numerics."""
    root, config = tmp_path_factory.mktemp("checkpoints"), ModelConfig(encoder_weights="none")
    paths = {}
    for name, level, lr in (("frozen", 0, 1e-3), ("finetune_all", 4, 1e-4)):
        checkpoint = make_checkpoint(build_model(config, level), config, 64, 1, {}, numerics={"precision": name})
        checkpoint["train_config"] = {"lr": lr}
        paths[name] = root / f"{name}.pt"
        save_checkpoint(checkpoint, paths[name])
    return paths


def test_the_recipe_holds_each_phase_of_a_fine_tuned_model(checkpoints):
    package = package_model([checkpoints["finetune_all"]], InferenceSettings(tta=True))
    recipe = recipe_of(package, checkpoints["frozen"])
    assert recipe["phases"] == {"frozen": {"lr": 1e-3}, "finetune_all": {"lr": 1e-4}}
    assert recipe["numerics"] == {"frozen": {"precision": "frozen"}, "finetune_all": {"precision": "finetune_all"}}
    assert recipe["input_size"] == 64 and recipe["model"]["encoder_weights"] == "none"
    assert recipe["inference"]["tta"] is True
    # an ensemble's recipe is its first member's; the frozen model's has the frozen phase only
    ensemble = package_model([checkpoints["finetune_all"]] * 2, InferenceSettings())
    assert recipe_of(ensemble, checkpoints["frozen"])["phases"] == recipe["phases"]
    frozen = recipe_of(package_model([checkpoints["frozen"]], InferenceSettings()), checkpoints["frozen"])
    assert list(frozen["phases"]) == ["frozen"] and list(frozen["numerics"]) == ["frozen"]


def test_training_data_from_the_download_and_prepare_records(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps({"source": "isic", "archives": {"a.zip": {"sha256": "ab" * 32, "bytes": 3}}})
    )
    (tmp_path / "summary.json").write_text(json.dumps({"pairs": {"train": 9, "val": 3}, "training_pairs": 12}))
    data = training_data(tmp_path, tmp_path, 42, 0.2)
    assert data == {
        "source": "isic",
        "archives": {"a.zip": "ab" * 32},
        "pairs": {"train": 9, "val": 3},
        "split_seed": 42,
        "val_fraction": 0.2,
    }


def test_exported_tables_read_the_test_split_then_each_external_set(tmp_path):
    (tmp_path / "clinic").mkdir()
    pd.DataFrame({"id": ["a", "b"], "orig_jaccard": [0.5, 0.7]}).to_csv(tmp_path / "finetune_all.csv", index=False)
    pd.DataFrame({"id": ["c"], "orig_jaccard": [0.1]}).to_csv(tmp_path / "clinic" / "finetune_all.csv", index=False)
    tables = exported_tables(tmp_path, "finetune_all", ["clinic"])
    assert list(tables) == ["test", "external clinic"]
    assert tables["test"]["orig_jaccard"].tolist() == [0.5, 0.7] and tables["external clinic"]["id"].tolist() == ["c"]
    with pytest.raises(DataError, match="no per-image CSV"):
        exported_tables(tmp_path, "frozen", [])


def test_review_by_evaluation_keeps_only_the_review_metrics(tmp_path):
    entry = {
        "orig_jaccard": 0.8,
        "review_auroc": 0.9,
        "review_flagged": 0.2,
        "external": {"clinic": {"n": 5, "orig_jaccard": 0.6, "review_flagged": 0.4}},
        "val_review_flagged": 0.25,
        "review_threshold": 0.3,
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"cv_ensemble": entry}))
    assert review_by_evaluation(tmp_path / "metrics.json", "cv_ensemble") == {
        "test": {"review_auroc": 0.9, "review_flagged": 0.2},
        "external clinic": {"review_flagged": 0.4},
    }


def test_the_cv_summary_is_of_the_exported_models_level(tmp_path, checkpoints):
    def entry(mean):
        return {"n": 12, "folds": 2, "orig_jaccard": {"fold0": mean, "fold1": mean, "mean": mean, "se": 0.01}}

    path = tmp_path / "cv.json"
    path.write_text(json.dumps({"frozen": entry(0.5), "finetune_all": entry(0.7)}))
    tuned = package_model([checkpoints["finetune_all"]], InferenceSettings())
    expected = {"model": "finetune_all", "folds": 2, "n": 12, "mean": 0.7, "se": 0.01}
    assert cv_summary(path, tuned, "finetune_all") == expected
    assert cv_summary(path, tuned, "cv_ensemble") == expected  # the ensemble: its members' level
    frozen = package_model([checkpoints["frozen"]], InferenceSettings())
    assert cv_summary(path, frozen, "cv_ensemble")["mean"] == 0.5
    path.write_text(json.dumps({"frozen": entry(0.5)}))
    assert cv_summary(path, tuned, "finetune_all") is None  # CV did not train this level
    path.write_text("{}")  # cross-validation off
    assert cv_summary(path, frozen, "frozen") is None
