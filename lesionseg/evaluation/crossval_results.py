"""A cross-validation's results: every fold model scored, the out-of-fold tables, the CV summary with each
model's review threshold, and the record of the fold models' ensemble.

:func:`score_folds` runs the models (:func:`~lesionseg.evaluation.fold_scores.score_fold`, fold by fold);
:func:`crossval_results` turns their per-image tables into what the ``cv_score`` stage writes, without a
model, so that it is tested on small tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lesionseg.data.cache import Split
from lesionseg.evaluation.fold_scores import mean_over_folds, score_fold, summarize_folds
from lesionseg.evaluation.review import IOU_COLUMN, QUALITY_COLUMN, review_metrics, review_threshold
from lesionseg.evaluation.selection import best_finetuned
from lesionseg.inference.settings import InferenceSettings
from lesionseg.training.folds import Fold, fold_checkpoints


@dataclass
class FoldScores:
    """Every fold model's per-image tables, as :func:`score_folds` gathers them, fold by fold.

    ``heldout``: model -> one held-out table per fold (with a ``fold`` column); ``external``: set -> model ->
    one table per fold model; ``folds``: the folds' indices, in the order scored."""

    heldout: dict[str, list[pd.DataFrame]]
    external: dict[str, dict[str, list[pd.DataFrame]]]
    folds: list[int]


@dataclass
class CrossValResults:
    """What a cross-validation measured.

    ``out_of_fold``: model -> its out-of-fold per-image table (every training pair once, sorted by id);
    ``external``: set -> model -> per image the mean over the fold models (every set, even one with no
    model); ``summary``: model -> :func:`~lesionseg.evaluation.fold_scores.summarize_folds` with ``review``
    (the out-of-fold review threshold and metrics) and ``external`` (per set the fold-model means), the
    stage's metrics file; ``ensemble``: the fold models of the best model's level (``folds``, ``model``,
    ``checkpoints`` relative to the folds' folder, ``review_threshold``)."""

    out_of_fold: dict[str, pd.DataFrame]
    external: dict[str, dict[str, pd.DataFrame]]
    summary: dict[str, dict]
    ensemble: dict


def score_folds(
    folds: list[Fold],
    models: Path,
    sets: dict[str, Split],
    settings: InferenceSettings,
    batch_size: int = 32,
    device=None,
) -> FoldScores:
    """Each fold's trained models (``models``: the folder of ``fold<k>/<model>.pt``) scored on its held-out
    pairs and on every external set (``sets``: name -> split), with ``settings``."""
    heldout: dict[str, list[pd.DataFrame]] = {}
    external: dict[str, dict[str, list[pd.DataFrame]]] = {name: {} for name in sets}
    for fold in folds:
        checkpoints = fold_checkpoints(models, fold.index)
        fold_heldout, fold_external = score_fold(checkpoints, fold, sets, settings, batch_size, device)
        for name, table in fold_heldout.items():
            heldout.setdefault(name, []).append(table)
        for set_name, tables in fold_external.items():
            for name, table in tables.items():
                external[set_name].setdefault(name, []).append(table)
    return FoldScores(heldout, external, [fold.index for fold in folds])


def _review(table: pd.DataFrame, threshold: float) -> dict:
    return review_metrics(table[QUALITY_COLUMN], table[IOU_COLUMN], threshold)


def crossval_results(scores: FoldScores, review_fraction: float) -> CrossValResults:
    """The tables, summary and ensemble record of ``scores``. Each model's review threshold flags
    ``review_fraction`` of its out-of-fold masks; the external sets' review metrics are at that threshold too.
    The ensemble's model: the fine-tuned model with the best CV Jaccard (the rule of
    :func:`~lesionseg.evaluation.selection.best_finetuned`)."""
    out_of_fold, summary, thresholds = {}, {}, {}
    for name, parts in scores.heldout.items():
        table = pd.concat(parts).sort_values("id")
        out_of_fold[name] = table
        summary[name] = summarize_folds(table)
        thresholds[name] = review_threshold(table[QUALITY_COLUMN], review_fraction)
        summary[name]["review"] = {"threshold": thresholds[name], **_review(table, thresholds[name])}
    external: dict[str, dict[str, pd.DataFrame]] = {}
    for set_name, models in scores.external.items():
        external[set_name] = {}
        for name, parts in models.items():
            table = external[set_name][name] = mean_over_folds(parts)
            summary[name].setdefault("external", {})[set_name] = {
                "n": len(table),
                "folds": len(parts),
                **{c: float(table[c].mean()) for c in ("orig_jaccard", "orig_dice")},
                # each fold model's review metrics at the out-of-fold threshold, averaged over the folds that
                # define them (review_metrics leaves out what a fold's images leave undefined)
                **pd.DataFrame([_review(part, thresholds[name]) for part in parts]).mean().dropna().to_dict(),
            }
    best = best_finetuned(summary, lambda name: summary[name]["orig_jaccard"]["mean"])
    ensemble = {
        "folds": len(scores.folds),
        "model": best,
        "checkpoints": [f"fold{index}/{best}.pt" for index in scores.folds],
        "review_threshold": thresholds[best],
    }
    return CrossValResults(out_of_fold, external, summary, ensemble)
