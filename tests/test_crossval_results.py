"""A cross-validation's results (the cv_score stage's logic) and the cv_ensemble's evaluation (the evaluate stage's
entry), on small synthetic tables and random-weight models at 32 px."""

import numpy as np
import pandas as pd
import pytest
import torch

from lesionseg.evaluation.crossval_results import FoldScores, crossval_results, score_folds
from lesionseg.evaluation.cv_ensemble import evaluate_cv_ensemble
from lesionseg.evaluation.evaluate import evaluate_with_external
from lesionseg.evaluation.fold_scores import summarize_folds
from lesionseg.evaluation.review import REVIEW_COLUMN, review_metrics, review_threshold
from lesionseg.evaluation.selection import best_finetuned, choose_model
from lesionseg.inference.settings import InferenceSettings, PostprocessConfig
from lesionseg.model.checkpoint import load_models, make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model, count_parameters
from lesionseg.training.folds import CrossValConfig, make_folds
from tests.test_crossval_and_stats import synthetic_split


def test_the_best_model_rule_prefers_fine_tuned_models_and_falls_back_to_frozen():
    scores = {"frozen": 0.9, "finetune_1": 0.7, "finetune_all": 0.8}
    assert best_finetuned(scores, scores.__getitem__) == "finetune_all"  # frozen never wins against a tuned model
    assert best_finetuned(["frozen"], lambda name: 0.1) == "frozen"
    assert best_finetuned(["finetune_2", "finetune_all"], lambda name: 0.5) == "finetune_2"  # first of equals
    asked = []
    best_finetuned(scores, lambda name: asked.append(name) or scores[name])
    assert asked == ["finetune_1", "finetune_all"]  # only the candidates are scored
    with pytest.raises(ValueError, match="no models to choose from"):
        best_finetuned([], len)


def test_choose_model_ranks_by_validation_jaccard_without_reading_the_frozen_checkpoint(tmp_path):
    config = ModelConfig(encoder_weights="none")
    paths = {"frozen": tmp_path / "missing.pt"}  # never read: fine-tuned models exist
    for name, level, jaccard in (("finetune_1", 1, 0.6), ("finetune_all", 4, 0.5)):
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(make_checkpoint(build_model(config, level), config, 32, 1, {"jaccard": jaccard}), paths[name])
    assert choose_model(paths) == "finetune_1"
    assert choose_model(paths, "frozen") == "frozen"
    with pytest.raises(ValueError, match="no checkpoints to choose from"):
        choose_model({})


def fold_table(ids, fold, jaccard, quality, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": ids,
            "fold": fold,
            "orig_jaccard": jaccard,
            "orig_dice": rng.uniform(0.5, 1.0, len(ids)),
            "quality": quality,
        }
    )


def synthetic_scores() -> FoldScores:
    """Two folds of three pairs (ids out of order), two models; the frozen model has the best CV Jaccard, and
    one external set of four images scored by each fold model."""
    heldout, external = {}, {"clinic": {}}
    for k, (name, shift) in enumerate((("frozen", 0.2), ("finetune_1", 0.1), ("finetune_all", 0.0))):
        heldout[name] = [
            fold_table(["c", "a", "e"], 0, [0.5 + shift, 0.6 + shift, 0.7], [0.3, 0.6, 0.9], seed=k),
            fold_table(["d", "b", "f"], 1, [0.4 + shift, 0.8, 0.6], [0.2, 0.5, 0.8], seed=k + 10),
        ]
        external["clinic"][name] = [
            fold_table(["x1", "x2", "x3", "x4"], 0, [0.9, 0.5, 0.6, 0.3], [0.9, 0.4, 0.6, 0.1]).drop(columns="fold"),
            fold_table(["x1", "x2", "x3", "x4"], 1, [0.7, 0.7, 0.8, 0.5], [0.8, 0.5, 0.2, 0.3]).drop(columns="fold"),
        ]
    return FoldScores(heldout, external, [0, 1])


def test_crossval_results_tables_summary_review_and_the_ensembles_model():
    scores = synthetic_scores()
    results = crossval_results(scores, 0.25)

    for name in scores.heldout:
        table = results.out_of_fold[name]
        assert list(table["id"]) == ["a", "b", "c", "d", "e", "f"] and list(table["fold"]) == [0, 1, 0, 1, 0, 1]
        threshold = review_threshold(table["quality"], 0.25)
        review = {"threshold": threshold, **review_metrics(table["quality"], table["orig_jaccard"], threshold)}
        summary = dict(results.summary[name])
        assert list(summary) == [*summarize_folds(table), "review", "external"]  # the metrics file's key order
        assert summary["review"] == pytest.approx(review, nan_ok=True)
        del summary["review"], summary["external"]
        assert summary == summarize_folds(table)

    # The external set: per image the mean of the two fold models, and the fold models' mean review metrics.
    clinic = results.external["clinic"]["finetune_all"]
    assert list(clinic["id"]) == ["x1", "x2", "x3", "x4"] and set(clinic["folds"]) == {2}
    assert clinic["orig_jaccard"].tolist() == pytest.approx([0.8, 0.6, 0.7, 0.4])
    entry = results.summary["finetune_all"]["external"]["clinic"]
    assert entry["n"] == 4 and entry["folds"] == 2 and entry["orig_jaccard"] == pytest.approx(0.625)
    threshold = results.summary["finetune_all"]["review"]["threshold"]
    parts = scores.external["clinic"]["finetune_all"]
    flagged = [review_metrics(p["quality"], p["orig_jaccard"], threshold)["review_flagged"] for p in parts]
    assert entry["review_flagged"] == pytest.approx(np.mean(flagged))

    # frozen scores best out of fold, but the ensemble is of the best fine-tuned level, with its threshold
    cv_jaccard = {name: results.summary[name]["orig_jaccard"]["mean"] for name in results.summary}
    assert max(cv_jaccard, key=cv_jaccard.get) == "frozen"
    assert cv_jaccard["finetune_1"] > cv_jaccard["finetune_all"]
    assert results.ensemble == {
        "folds": 2,
        "model": "finetune_1",
        "checkpoints": ["fold0/finetune_1.pt", "fold1/finetune_1.pt"],
        "review_threshold": results.summary["finetune_1"]["review"]["threshold"],
    }


def test_crossval_results_with_only_frozen_models_and_a_set_without_models():
    scores = synthetic_scores()
    only_frozen = FoldScores({"frozen": scores.heldout["frozen"]}, {"clinic": {}}, [0, 1])
    results = crossval_results(only_frozen, 0.2)
    assert results.ensemble["model"] == "frozen" and results.ensemble["checkpoints"][1] == "fold1/frozen.pt"
    assert results.external == {"clinic": {}}  # the set is kept (the stage makes its folder either way)
    assert "external" not in results.summary["frozen"]


def checkpoint_folder(root, folds=(0, 1), levels=(("frozen", 0), ("finetune_all", 4))):
    config = ModelConfig(encoder_weights="none")
    for k in folds:
        (root / f"fold{k}").mkdir(parents=True)
        for name, level in levels:
            torch.manual_seed(10 * k + level)
            save_checkpoint(
                make_checkpoint(build_model(config, level), config, 32, 1, {}), root / f"fold{k}" / f"{name}.pt"
            )
    return root


def test_score_folds_scores_each_fold_with_its_own_models_in_fold_order(tmp_path, monkeypatch):
    from lesionseg.evaluation import crossval_results as module

    pairs, clinic = synthetic_split(8, size=32), synthetic_split(3, size=32, seed=1)
    folds = make_folds(pairs, CrossValConfig(folds=2, val_fraction=0.2))
    models = checkpoint_folder(tmp_path / "cv")
    calls, real_score_fold = [], module.score_fold
    monkeypatch.setattr(
        module, "score_fold", lambda c, f, *a: calls.append((c, f.index, a)) or real_score_fold(c, f, *a)
    )
    settings = InferenceSettings(tta=True, postprocess=PostprocessConfig(keep_largest=True))
    scores = score_folds(folds, models, {"clinic": clinic}, settings, 4)

    # each fold by its own checkpoints (frozen first), with the inference settings passed through as given
    assert [(list(c.values()), k) for c, k, _ in calls] == [
        ([models / f"fold{k}" / "frozen.pt", models / f"fold{k}" / "finetune_all.pt"], k) for k in (0, 1)
    ]
    assert all(a == ({"clinic": clinic}, settings, 4, None) for _, _, a in calls)
    assert scores.folds == [0, 1] and list(scores.heldout) == ["frozen", "finetune_all"]
    for name in ("frozen", "finetune_all"):
        assert [set(t["fold"]) for t in scores.heldout[name]] == [{0}, {1}]
        assert [list(t["id"]) for t in scores.heldout[name]] == [list(f.heldout.ids) for f in folds]
        assert [list(t["id"]) for t in scores.external["clinic"][name]] == [list(clinic.ids)] * 2
    results = crossval_results(scores, 0.2)
    assert len(results.out_of_fold["frozen"]) == 8 and results.ensemble["model"] == "finetune_all"


@pytest.mark.parametrize("threshold", [0.4, None])
def test_the_cv_ensemble_is_scored_with_its_records_threshold_and_facts(tmp_path, threshold):
    models = checkpoint_folder(tmp_path / "cv", levels=(("finetune_all", 4),))
    record = {"folds": 2, "model": "finetune_all", "checkpoints": ["fold0/finetune_all.pt", "fold1/finetune_all.pt"]}
    record["review_threshold"] = threshold
    test, clinic = synthetic_split(4, size=32, seed=2), synthetic_split(3, size=32, seed=3)
    args = (InferenceSettings(), 4)
    metrics, tables, model = evaluate_cv_ensemble(record, models, test, {"clinic": clinic}, *args)

    ensemble, _ = load_models([models / p for p in record["checkpoints"]])
    expected, _ = evaluate_with_external(ensemble, test, {"clinic": clinic}, *args)
    assert metrics["orig_jaccard"] == pytest.approx(expected["orig_jaccard"])
    assert metrics["external"]["clinic"]["orig_jaccard"] == pytest.approx(
        expected["external"]["clinic"]["orig_jaccard"]
    )
    assert metrics["members"] == 2 and metrics["member_model"] == "finetune_all"
    single = count_parameters(build_model(ModelConfig(encoder_weights="none"), 4))
    assert metrics["params_total"] == 2 * single["total"] == count_parameters(model)["total"]
    assert set(tables) == {"test", "clinic"}
    if threshold is None:  # no threshold: only the AUROC, and no review column
        assert "review_threshold" not in metrics and "review_flagged" not in metrics
        assert REVIEW_COLUMN not in tables["test"]
    else:
        assert metrics["review_threshold"] == threshold
        flagged = (tables["test"]["quality"] < threshold).mean()
        assert metrics["review_flagged"] == pytest.approx(flagged)
        assert tables["clinic"][REVIEW_COLUMN].tolist() == (tables["clinic"]["quality"] < threshold).tolist()
        assert "review_flagged" in metrics["external"]["clinic"]
