"""The cross-validation ensemble (the fold models that the ``cv_score`` stage's record names, averaged),
scored like one of the pipeline's models: the evaluate stage's ``cv_ensemble`` entry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from lesionseg.data.cache import Split
from lesionseg.evaluation.evaluate import add_review, evaluate_with_external
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import load_models
from lesionseg.model.model import count_parameters


def evaluate_cv_ensemble(
    record: dict,
    models: Path,
    split: Split,
    external: dict[str, Split] | None,
    settings: InferenceSettings,
    batch_size: int = 32,
    device=None,
) -> tuple[dict, dict[str, pd.DataFrame], torch.nn.Module]:
    """The ensemble of ``record`` (:attr:`~lesionseg.evaluation.crossval_results.CrossValResults.ensemble`;
    its ``checkpoints`` relative to ``models``) scored with ``settings`` on ``split`` and each ``external`` set
    (:func:`~lesionseg.evaluation.evaluate.evaluate_with_external`), with the review metrics at the record's
    ``review_threshold`` (chosen on its member model's out-of-fold masks: the ensemble's members were trained
    on the validation pairs, so they cannot choose it) and the entry's facts: ``review_threshold``,
    ``params_*`` (all members' parameters), ``members`` and ``member_model``.

    Returns ``(metrics, per-image tables, the ensemble)``, like
    :func:`~lesionseg.evaluation.evaluate.evaluate_checkpoint`, and the model to score more sets with."""
    model, _ = load_models([Path(models) / path for path in record["checkpoints"]])
    model = model.to(device) if device else model
    metrics, tables = evaluate_with_external(model, split, external, settings, batch_size, device)
    threshold = record.get("review_threshold")
    add_review(metrics, tables, threshold)
    if threshold is not None:
        metrics["review_threshold"] = threshold
    metrics.update({f"params_{k}": v for k, v in count_parameters(model).items()})
    metrics.update({"members": len(record["checkpoints"]), "member_model": record["model"]})
    return metrics, tables, model
