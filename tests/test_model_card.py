"""The model card: generated from the pipeline's records, MONAI's network_data_format, Markdown for people."""

import json

import numpy as np
import pandas as pd
import pytest

from lesionseg.evaluation.stats import mean_interval
from lesionseg.inference.exported import package_model
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model, parameter_counts_by_level
from lesionseg.serving.model_card import card_markdown, card_results, model_card


def tables(seed=0):
    rng = np.random.default_rng(seed)
    test = pd.DataFrame({"id": range(30), "orig_jaccard": rng.uniform(0.8, 0.95, 30), "orig_dice": 0.9})
    extra = pd.DataFrame({"id": range(40), "orig_jaccard": rng.uniform(0.5, 0.8, 40), "orig_dice": 0.8})
    return {"test": test, "external clinic": extra}


def test_results_hold_intervals_and_the_drop_on_other_clinics():
    results = card_results(tables(), 0.42, {"test": {"review_auroc": 0.9}}, {"model": "finetune_all", "mean": 0.8})
    test, extra = results["evaluations"]["test"], results["evaluations"]["external clinic"]
    assert test["n"] == 30 and "drop" not in test
    low, high = test["iou"]["ci95"]
    assert low < test["iou"]["mean"] < high
    assert test["iou"]["mean"] == pytest.approx(tables()["test"]["orig_jaccard"].mean())
    assert extra["drop"]["delta"] == pytest.approx(extra["iou"]["mean"] - test["iou"]["mean"])
    assert extra["drop"]["ci95"][1] < 0  # 0.5-0.8 against 0.8-0.95: a clear drop
    assert results["review"] == {"threshold": 0.42, "by_evaluation": {"test": {"review_auroc": 0.9}}}
    assert card_results(tables(), None, {}, None).keys() == {"evaluations"}


def test_mean_interval_is_scipys_bootstrap_of_the_mean():
    mean, (low, high) = mean_interval(np.r_[np.zeros(10), np.ones(10)])
    assert mean == 0.5 and 0.25 < low < 0.5 < high < 0.75
    mean, interval = mean_interval([0.7, 0.7, 0.7])  # no spread: the interval is the point
    assert interval == (mean, mean) and mean == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([0.5])


def test_the_card_describes_the_exported_model(tmp_path):
    config = ModelConfig(encoder_weights="none")
    save_checkpoint(make_checkpoint(build_model(config, 4), config, 64, 3, {}), tmp_path / "m.pt")
    package = package_model([tmp_path / "m.pt"], InferenceSettings(tta=True, review_threshold=0.5))
    card = model_card(
        name="finetune_all",
        checkpoint=package,
        parameter_counts=parameter_counts_by_level(),
        recipe={"input_size": 64},
        data={"source": "archives", "archives": {"a.zip": "ab" * 32}, "pairs": {"train": 9}, "split_seed": 42},
        results=card_results(tables(), 0.5, {}, None),
        provenance={"git_commit": "abc123", "dvc_experiment": "exp-1", "mlflow_run_id": "r1"},
    )
    assert json.loads(json.dumps(card)) == card  # JSON all the way down
    assert card["model"]["parameter_counts"]["1"] == {"total": 6_995_457, "trainable": 6_452_929, "frozen": 542_528}
    assert card["model"]["inference"]["tta"] is True and card["model"]["unfreeze_level"] == "all"
    image = card["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["spatial_shape"] == [64, 64] and image["dtype"] == "float32"
    assert card["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "lesion"}
    assert card["model"]["training_numerics"] == [{}]  # made by hand, not by a training loop (tests/test_train.py)
    text = card_markdown(card)
    assert "Training step precision and layout: not recorded" in text
    for fact in ("6,995,457", "a.zip", "abc123", "exp-1", "Not a diagnostic device", "external clinic", "0.5"):
        assert fact in text, fact
