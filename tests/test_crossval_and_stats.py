"""Cross-validation folds and summaries and the paired statistics, on tiny synthetic data (`lesionseg compare`:
tests/test_compare.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from lesionseg.data.cache import Split, encode_mask
from lesionseg.evaluation.fold_scores import summarize_folds
from lesionseg.evaluation.stats import format_change, paired_difference
from lesionseg.training.folds import CrossValConfig, _fold_assignment, make_folds


def synthetic_split(n: int, size: int = 8, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i, side in enumerate(rng.integers(1, size + 1, n)):
        masks[i, :side, :side] = 1
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    blobs = [encode_mask(m.astype(bool)) for m in masks]
    return Split.from_arrays(images, masks, [f"ISIC_{i:07d}" for i in range(n)], [(size, size)] * n, blobs)


@pytest.mark.parametrize(("n", "folds"), [(10, 2), (23, 5), (706, 5)])
def test_folds_are_disjoint_cover_every_pair_and_balance_sizes(n, folds):
    areas = np.random.default_rng(1).uniform(0, 1, n)
    assignment = _fold_assignment(areas, folds, seed=3)
    assert set(assignment) == set(range(folds))
    sizes = np.bincount(assignment, minlength=folds)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    assert np.array_equal(assignment, _fold_assignment(areas, folds, seed=3))  # seeded
    assert not np.array_equal(assignment, _fold_assignment(areas, folds, seed=4))


def test_folds_are_stratified_by_lesion_area():
    areas = np.arange(500.0)  # every fold must get small and large lesions alike
    assignment = _fold_assignment(areas, 5, seed=0)
    fold_means = [areas[assignment == k].mean() for k in range(5)]
    assert max(fold_means) - min(fold_means) < 5  # a random split would differ by ~20
    with pytest.raises(ValueError, match="cannot make 5 folds of 3 pairs"):
        _fold_assignment(areas[:3], 5, seed=0)


def test_make_folds_hold_out_each_pair_once_and_keep_inner_splits_apart():
    pairs = synthetic_split(21)
    folds = make_folds(pairs, CrossValConfig(folds=3, seed=0, val_fraction=0.2))
    held = [i for fold in folds for i in fold.heldout.ids]
    assert sorted(held) == sorted(pairs.ids)
    for fold in folds:
        train, val, out = set(fold.train.ids), set(fold.val.ids), set(fold.heldout.ids)
        assert not (train & val or train & out or val & out) and len(train | val | out) == 21
        assert len(val) == round(len(train | val) * 0.2)
        i = pairs.ids.index(fold.heldout.ids[0])
        assert torch.equal(fold.heldout.images[0], pairs.images[i])
        assert np.array_equal(fold.heldout.fullres_mask(0), pairs.fullres_mask(i))


def test_split_concat_keeps_rows_and_full_resolution_masks():
    a, b = synthetic_split(3, seed=1), synthetic_split(2, seed=2)
    joined = Split.concat([a, b])
    assert joined.ids == a.ids + b.ids and len(joined) == 5
    assert torch.equal(joined.masks[3:], b.masks)
    assert joined.fullres_mask(4).tolist() == b.fullres_mask(1).tolist()


@pytest.mark.parametrize("value", [1, -1, 2.5])
def test_bad_fold_counts(value):
    with pytest.raises(ValueError, match="folds must be 0"):
        CrossValConfig(folds=value)


def test_summarize_folds_mean_and_standard_error():
    table = pd.DataFrame(
        {
            "id": [f"ISIC_{i:07d}" for i in range(6)],
            "fold": [0, 0, 1, 1, 2, 2],
            "orig_jaccard": [0.9, 0.7, 0.8, 0.6, 1.0, 0.5],
            "orig_dice": [0.9] * 6,
        }
    )
    summary = summarize_folds(table)
    fold_means = [0.8, 0.7, 0.75]
    entry = summary["orig_jaccard"]
    assert [entry["fold0"], entry["fold1"], entry["fold2"]] == pytest.approx(fold_means)
    assert entry["mean"] == pytest.approx(0.75)
    assert entry["se"] == pytest.approx(np.std(fold_means, ddof=1) / np.sqrt(3))
    assert summary["orig_jaccard_thresholded"]["fold2"] == pytest.approx(0.5)  # 0.5 < 0.65 counts as 0
    assert summary["n"] == 6 and summary["folds"] == 3


def test_paired_difference_of_a_model_with_itself_is_zero():
    scores = np.random.default_rng(0).uniform(0.5, 1.0, 100)
    same = paired_difference(scores, scores)
    assert same.delta == 0 and same.ci95 == (0.0, 0.0) and same.p_value == 1.0 and not same.significant


def test_paired_difference_finds_a_clearly_worse_model():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.0, 100)
    b = a - 0.03 + rng.normal(0, 0.02, 100)
    worse = paired_difference(a, b)
    assert worse.ci95[1] < 0 and worse.significant and worse.p_value < 1e-6
    assert worse.ci95[0] < worse.delta < worse.ci95[1] and worse.delta == pytest.approx(np.mean(b - a))
    assert format_change(worse).startswith(f"{worse.delta:+.4f} [")
    noisy = paired_difference(a, a + rng.normal(0, 0.05, 100))  # no real change: the interval holds 0
    assert noisy.ci95[0] < 0 < noisy.ci95[1]
    with pytest.raises(ValueError, match="equal length"):
        paired_difference(a, b[:-1])


def test_score_fold_loads_each_model_once_and_scores_held_out_and_external_pairs(tmp_path, monkeypatch):
    from lesionseg.evaluation import fold_scores
    from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lesionseg.model.model import ModelConfig, build_model

    pairs, external = synthetic_split(12, size=32), synthetic_split(5, size=32, seed=1)
    (fold,) = [f for f in make_folds(pairs, CrossValConfig(folds=2, val_fraction=0.2)) if f.index == 1]
    config = ModelConfig(encoder_weights="none")
    checkpoints = {}
    for name, level in (("frozen", 0), ("finetune_all", 4)):
        checkpoints[name] = tmp_path / f"{name}.pt"
        save_checkpoint(make_checkpoint(build_model(config, level), config, 32, 1, {}), checkpoints[name])
    loads = []
    real_load = fold_scores.load_model
    monkeypatch.setattr(fold_scores, "load_model", lambda path: loads.append(path) or real_load(path))

    heldout, sets = fold_scores.score_fold(checkpoints, fold, {"clinic": external})
    assert sorted(loads) == sorted(checkpoints.values())  # once each, for the held-out pairs and the set alike
    for name in checkpoints:
        assert list(heldout[name]["id"]) == list(fold.heldout.ids) and set(heldout[name]["fold"]) == {1}
        assert list(sets["clinic"][name]["id"]) == list(external.ids)
    mean = fold_scores.mean_over_folds([sets["clinic"]["frozen"], sets["clinic"]["finetune_all"]])
    both = (sets["clinic"]["frozen"]["orig_jaccard"] + sets["clinic"]["finetune_all"]["orig_jaccard"]) / 2
    assert mean["orig_jaccard"].to_numpy() == pytest.approx(both.to_numpy()) and set(mean["folds"]) == {2}


def test_the_fold_manifest_rebuilds_the_same_folds_and_names_missing_pairs():
    from lesionseg.training.folds import fold_manifest, folds_from_manifest

    pairs = synthetic_split(23)
    folds = make_folds(pairs, CrossValConfig(folds=5))
    rebuilt = folds_from_manifest(pairs, fold_manifest(folds))
    for a, b in zip(folds, rebuilt, strict=True):
        assert a.index == b.index and (a.train.ids, a.val.ids, a.heldout.ids) == (b.train.ids, b.val.ids, b.heldout.ids)
    with pytest.raises(ValueError, match="names 1 pairs the data lacks"):
        folds_from_manifest(pairs.subset(list(range(22))), fold_manifest(folds))
