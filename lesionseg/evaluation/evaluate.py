"""Evaluate a model on a prepared split, at model and at original resolution.

Original-resolution metrics follow the official ISIC scorer: the logits are
upsampled (bilinear) to each image's original size, thresholded (probability
0.5 unless the settings say otherwise), and compared with the original mask.
The masks come from :func:`lesionseg.inference.predict.predict`, as everywhere else.
"""

from __future__ import annotations

import pandas as pd
import torch

from lesionseg.data.cache import Split
from lesionseg.evaluation.lesion_size import LESION_SHARE_COLUMN, lesion_share, size_bin_scores
from lesionseg.evaluation.review import IOU_COLUMN, QUALITY_COLUMN, REVIEW_COLUMN, review_metrics, review_threshold
from lesionseg.inference.predict import Prediction, predict
from lesionseg.inference.quality import needs_review
from lesionseg.inference.settings import InferenceSettings
from lesionseg.metrics import COUNT_NAMES, confusion_counts, per_image_scores, summarize
from lesionseg.model.checkpoint import load_model
from lesionseg.model.model import count_parameters
from lesionseg.training.losses import DiceBCELoss

ORIGINAL_PREFIX = "orig_"
VALIDATION_PREFIX = "val_"
EXTERNAL_KEY = "external"  # a model's metrics.json entry: external set name -> its scores
# An external set's entry (and per-image folder) as calibrated on a few of its images (calibrate.calibrated_external)
CALIBRATED_SUFFIX = "_calibrated"
TEST_TABLE = "test"
_ZOOMED_COLUMN = "zoomed"  # per-image table, with the zoom on: whether the image got the second pass


def evaluate_model(
    model: torch.nn.Module,
    split: Split,
    settings: InferenceSettings = InferenceSettings(),
    batch_size: int = 32,
    device=None,
) -> tuple[dict, pd.DataFrame]:
    """Metrics dict and per-image table of ``model``'s :func:`~lesionseg.inference.predict.predict` on ``split``.

    Metrics: ``loss`` (DiceBCE of the logits), the :func:`~lesionseg.metrics.summarize` scores at model resolution
    and, with the ``orig_`` prefix, at original resolution (the official ones), and ``orig_jaccard`` per lesion-size
    bin. The table has one row per image: ``id``, ``height``, ``width``, the per-image scores and pixel counts
    (``tp`` ... ``tn``) at both resolutions, ``lesion_share``, the mask's ``quality`` and, with the zoom on,
    ``zoomed``. Every score is of the masks with ``settings``' threshold and clean-up applied.
    """
    return _score_prediction(predict(model, split.images, settings, batch_size, device), split)


def _score_prediction(prediction: Prediction, split: Split) -> tuple[dict, pd.DataFrame]:
    """:func:`evaluate_model`'s metrics and per-image table, of a prediction already made on ``split``'s images."""
    target = split.masks[:, None].float()
    full = _fullres_counts(prediction, split)
    small = confusion_counts(prediction.input_masks(), target > 0)
    metrics = {"loss": float(DiceBCELoss()(prediction.input_logits, target)), **summarize(small)}
    metrics.update({ORIGINAL_PREFIX + k: v for k, v in summarize(full).items()})
    table = pd.DataFrame(
        {"id": split.ids, "height": split.orig_sizes[:, 0].numpy(), "width": split.orig_sizes[:, 1].numpy()}
    )
    for prefix, counts in (("", small), (ORIGINAL_PREFIX, full)):
        for name, values in per_image_scores(counts).items():
            table[prefix + name] = values.numpy()
        for name, values in zip(COUNT_NAMES, counts.unbind(1)):
            table[prefix + name] = values.numpy()
    tp, _, fn, _ = full.unbind(1)
    table[LESION_SHARE_COLUMN] = lesion_share((tp + fn).numpy(), full.sum(1).numpy())
    metrics.update(size_bin_scores(table, ORIGINAL_PREFIX + "jaccard"))
    table[QUALITY_COLUMN] = prediction.quality
    if prediction.settings.zoom.enabled:
        table[_ZOOMED_COLUMN] = prediction.zoomed
    return metrics, table


def _fullres_counts(prediction: Prediction, split: Split) -> torch.Tensor:
    """Per-image ``(N, 4)`` confusion counts of the prediction's masks at each image's original resolution."""
    rows = []
    for i in range(len(split)):
        height, width = (int(v) for v in split.orig_sizes[i])
        truth = torch.from_numpy(split.fullres_mask(i))
        rows.append(confusion_counts(prediction.mask(i, height, width)[None], truth[None]))
    return torch.cat(rows)


def add_review(metrics: dict, tables: dict[str, pd.DataFrame], threshold: float | None) -> None:
    """In place: a ``review`` column (flagged: quality below ``threshold``) in each per-image table (keyed
    ``"test"`` and by external set, as :func:`evaluate_with_external` returns them) and the split's
    :func:`~lesionseg.evaluation.review.review_metrics` in ``metrics`` (an external set's under
    ``metrics[EXTERNAL_KEY][name]``). Without a threshold: no column, and only the AUROC."""
    for name, table in tables.items():
        if threshold is not None:
            table[REVIEW_COLUMN] = needs_review(table[QUALITY_COLUMN], threshold)
        scores = review_metrics(table[QUALITY_COLUMN], table[IOU_COLUMN], threshold)
        (metrics if name == TEST_TABLE else metrics[EXTERNAL_KEY][name]).update(scores)


def evaluate_checkpoint(
    path,
    split: Split,
    settings: InferenceSettings = InferenceSettings(),
    batch_size: int = 32,
    device=None,
    val_split: Split | None = None,
    external: dict[str, Split] | None = None,
    review_fraction: float | None = None,
) -> tuple[dict, dict[str, pd.DataFrame], dict]:
    """:func:`evaluate_model` on a checkpoint's model, with the report's extra keys.

    Returns ``(metrics, per-image tables, checkpoint dict)``; tables keyed ``"test"`` and by external set name. The
    metrics add ``params_total``/``params_trainable``/``params_frozen``, ``lr``, ``epochs`` and ``best_epoch``; with
    ``val_split`` its scores, prefixed ``val_``; with ``external`` (name -> split) each set's scores and image count
    under ``metrics[EXTERNAL_KEY][name]``. With ``val_split`` and ``review_fraction``: ``review_threshold``, the
    quality quantile that flags that share of the validation masks, and every split's review metrics
    (:func:`add_review`).
    """
    model, checkpoint = load_model(path)
    model = model.to(device) if device else model
    metrics, tables = evaluate_with_external(model, split, external, settings, batch_size, device)
    if val_split is not None:
        val_metrics, val_table = evaluate_model(model, val_split, settings, batch_size, device)
        if review_fraction is not None:
            threshold = review_threshold(val_table[QUALITY_COLUMN], review_fraction)
            add_review(metrics, tables, threshold)
            add_review(val_metrics, {TEST_TABLE: val_table}, threshold)
            metrics["review_threshold"] = threshold
        metrics.update({VALIDATION_PREFIX + k: v for k, v in val_metrics.items()})
    trained = checkpoint.get("train_config", {})
    metrics.update({f"params_{k}": v for k, v in count_parameters(model).items()})
    metrics.update({"lr": trained.get("lr"), "epochs": trained.get("epochs"), "best_epoch": checkpoint["epoch"]})
    return metrics, tables, checkpoint


def evaluate_with_external(
    model: torch.nn.Module,
    split: Split,
    external: dict[str, Split] | None = None,
    settings: InferenceSettings = InferenceSettings(),
    batch_size: int = 32,
    device=None,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """:func:`evaluate_model` on ``split`` plus every external set (under ``metrics[EXTERNAL_KEY]``);
    the per-image tables keyed ``"test"`` and by set name."""
    metrics, table = evaluate_model(model, split, settings, batch_size, device)
    tables = {TEST_TABLE: table}
    if external:
        metrics[EXTERNAL_KEY], external_tables = evaluate_external(model, external, settings, batch_size, device)
        tables.update(external_tables)
    return metrics, tables


def evaluate_external(
    model: torch.nn.Module,
    sets: dict[str, Split],
    settings: InferenceSettings = InferenceSettings(),
    batch_size: int = 32,
    device=None,
) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """Every external set scored like the test split: ``({name: metrics + "n"}, {name: per-image table})``."""
    metrics, tables = {}, {}
    for name, split in sets.items():
        scores, tables[name] = evaluate_model(model, split, settings, batch_size, device)
        metrics[name] = {"n": len(split), **scores}
    return metrics, tables
