"""Scores by lesion size: the share, the bins, the per-bin metrics of evaluation and ``compare --by-size``."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lesionseg.cli import main
from lesionseg.data.cache import Split, encode_mask
from lesionseg.evaluation.evaluate import _score_prediction
from lesionseg.evaluation.lesion_size import (
    LESION_SHARE_COLUMN,
    _size_bin_rows,
    lesion_share,
    size_bin_scores,
    split_by_size,
)
from lesionseg.inference.predict import Prediction
from lesionseg.inference.settings import InferenceSettings

SHARES = np.array([0.01, 0.0499, 0.05, 0.1, 0.15, 0.39, 0.4, 1.0])


def sized_table(iou, shares=SHARES) -> pd.DataFrame:
    ids = [f"ISIC_{i:07d}" for i in range(len(shares))]
    return pd.DataFrame({"id": ids, "orig_jaccard": iou, LESION_SHARE_COLUMN: shares})


def test_every_image_is_in_exactly_one_bin_lower_bound_inclusive():
    rows = _size_bin_rows(sized_table(np.zeros(len(SHARES))))
    assert list(rows) == ["lesion < 5%", "lesion 5-15%", "lesion 15-40%", "lesion >= 40%"]
    assert np.array_equal(np.sum(list(rows.values()), axis=0), np.ones(len(SHARES)))
    assert rows["lesion < 5%"].tolist() == [True, True, False, False, False, False, False, False]
    assert rows["lesion >= 40%"].tolist() == [False] * 6 + [True, True]
    assert lesion_share([3, 0], [12, 0]).tolist() == [0.25, 0.0]


def test_bin_scores_are_bin_means_and_empty_bins_are_left_out():
    iou = np.array([0.2, 0.4, 0.6, 0.8, 0.5, 0.7, 0.9, 0.95])
    scores = size_bin_scores(sized_table(iou))
    assert scores == pytest.approx(
        {
            "orig_jaccard_size_lt5": 0.3,
            "orig_jaccard_size_5_15": 0.7,
            "orig_jaccard_size_15_40": 0.6,
            "orig_jaccard_size_ge40": 0.925,
        }
    )
    assert list(size_bin_scores(sized_table(iou[:2], SHARES[:2]))) == ["orig_jaccard_size_lt5"]
    with pytest.raises(ValueError, match="frozen on test: no 'lesion_share' column"):
        split_by_size({"test": {"frozen": sized_table(iou).drop(columns=LESION_SHARE_COLUMN)}})


def test_evaluation_records_each_true_lesion_share_and_the_bin_means():
    size, sides = 20, [2, 4, 10, 20]  # lesions of 1%, 4%, 25% and 100% of the image
    masks = np.zeros((len(sides), size, size), dtype=np.uint8)
    for i, side in enumerate(sides):
        masks[i, :side, :side] = 1
    blobs = [encode_mask(m.astype(bool)) for m in masks]
    images = np.zeros((len(sides), size, size, 3), dtype=np.uint8)
    split = Split.from_arrays(images, masks, [f"ISIC_{i:07d}" for i in range(4)], [(size, size)] * 4, blobs)
    logits = torch.full((4, 1, size, size), -5.0)
    logits[:, :, :10, :10] = 5.0  # the same 10 x 10 prediction for every image
    metrics, table = _score_prediction(Prediction.from_logits(InferenceSettings(), logits), split)
    assert table[LESION_SHARE_COLUMN].tolist() == pytest.approx([0.01, 0.04, 0.25, 1.0])
    assert table["orig_jaccard"].tolist() == pytest.approx([0.04, 0.16, 1.0, 0.25])
    # the pixel counts behind the scores, so any other averaging can be recomputed from the table
    counts = table[["orig_tp", "orig_fp", "orig_fn", "orig_tn"]].to_numpy()
    assert counts.tolist() == [[4, 96, 0, 300], [16, 84, 0, 300], [100, 0, 0, 300], [100, 0, 300, 0]]
    assert table[["tp", "fp", "fn", "tn"]].sum(axis=1).tolist() == [size * size] * 4
    assert metrics["orig_jaccard_size_lt5"] == pytest.approx(0.10)
    assert metrics["orig_jaccard_size_15_40"] == pytest.approx(1.0)
    assert metrics["orig_jaccard_size_ge40"] == pytest.approx(0.25)
    assert "orig_jaccard_size_5_15" not in metrics


def test_compare_by_size_pairs_the_images_of_each_bin(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shares = rng.uniform(0.0, 0.6, 40)
    base = rng.uniform(0.5, 0.9, 40)
    # B gains 0.1 on lesions under 5% of the image and nothing elsewhere.
    head = base + np.where(shares < 0.05, 0.1, 0.0)
    for name, iou in (("a", base), ("b", head)):
        folder = tmp_path / name / "per_image"
        folder.mkdir(parents=True)
        sized_table(iou, shares).iloc[::-1].to_csv(folder / "finetune_all.csv", index=False)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--by-size", "--json"]) == 0
    rows = {r["evaluation"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows)[0] == "test"
    assert rows["test, lesion < 5%"]["n"] == int((shares < 0.05).sum())
    assert rows["test, lesion < 5%"]["delta"] == pytest.approx(0.1)
    assert rows["test, lesion 15-40%"]["delta"] == pytest.approx(0.0)
    assert sum(r["n"] for e, r in rows.items() if e != "test") == 40
    # Without the flag: the overall comparison only.
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    assert [r["evaluation"] for r in json.loads(capsys.readouterr().out)] == ["test"]
