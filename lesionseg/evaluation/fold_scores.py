"""Scoring k-fold cross-validation's fold models: out of fold, and on external sets.

The out-of-fold per-image scores of all folds together cover every training
pair once, each scored by the fold model that never saw it: what paired
comparisons between recipes use (:mod:`lesionseg.experiments.compare`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lesionseg.data.cache import Split
from lesionseg.evaluation.evaluate import ORIGINAL_PREFIX, evaluate_external, evaluate_model
from lesionseg.inference.settings import InferenceSettings
from lesionseg.metrics import THRESHOLDED_JACCARD_CUTOFF
from lesionseg.model.checkpoint import load_model
from lesionseg.training.folds import Fold

# Metrics aggregated over folds (original resolution, the official definitions).
_CV_METRICS = ("jaccard", "dice", "jaccard_thresholded")


def score_fold(
    checkpoints: dict[str, Path],
    fold: Fold,
    sets: dict[str, Split] | None = None,
    settings: InferenceSettings = InferenceSettings(),
    batch_size: int = 32,
    device=None,
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, pd.DataFrame]]]:
    """One fold's models (model name -> checkpoint), each loaded once, scored with ``settings`` on the fold's
    held-out pairs and on every external set (``sets``: name -> split). Returns ``(model -> held-out per-image
    table with a ``fold`` column, set -> model -> per-image table)``."""
    heldout: dict[str, pd.DataFrame] = {}
    external: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in sets or {}}
    for name, path in checkpoints.items():
        model, _ = load_model(path)
        model = model.to(device) if device else model
        _, table = evaluate_model(model, fold.heldout, settings, batch_size, device)
        table.insert(1, "fold", fold.index)
        heldout[name] = table
        scored = evaluate_external(model, sets or {}, settings, batch_size, device)[1]
        for set_name, set_table in scored.items():
            external[set_name][name] = set_table
    return heldout, external


def mean_over_folds(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per image, the mean of every score column over the fold models' tables of one set (same images);
    ``folds``: how many fold models were averaged. What one model trained by this recipe scores, on average."""
    stacked = pd.concat(tables)
    mean = stacked.groupby("id", sort=False).mean(numeric_only=True).reset_index()
    mean.insert(1, "folds", len(tables))
    return mean


def summarize_folds(table: pd.DataFrame) -> dict:
    """CV summary of one model's out-of-fold per-image table (``fold`` and ``orig_*`` columns).

    For each of ``jaccard``, ``dice`` and ``jaccard_thresholded`` at original resolution: the per-fold
    means (``fold<k>``), their ``mean`` and standard error ``se``
    (sample SD of the fold means / sqrt(folds)), and ``n`` pairs in all.
    Thresholded Jaccard is computed from per-image Jaccard as in
    :func:`lesionseg.metrics.summarize`.
    """
    jaccard = table[ORIGINAL_PREFIX + "jaccard"]
    columns = {
        "jaccard": jaccard,
        "dice": table[ORIGINAL_PREFIX + "dice"],
        "jaccard_thresholded": jaccard.where(jaccard >= THRESHOLDED_JACCARD_CUTOFF, 0.0),
    }
    summary = {"n": int(len(table)), "folds": int(table["fold"].nunique())}
    for metric in _CV_METRICS:
        per_fold = columns[metric].groupby(table["fold"]).mean()
        entry = {f"fold{int(k)}": float(v) for k, v in per_fold.items()}
        entry["mean"] = float(per_fold.mean())
        entry["se"] = float(per_fold.std(ddof=1) / math.sqrt(len(per_fold))) if len(per_fold) > 1 else float("nan")
        summary[ORIGINAL_PREFIX + metric] = entry
    return summary
