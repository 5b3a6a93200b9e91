"""The images the report shows (spread over a split, or its worst-scored) and the model's masks on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lesionseg.data.cache import Split
from lesionseg.inference.predict import predict
from lesionseg.inference.settings import InferenceSettings
from lesionseg.metrics import confusion_counts, per_image_scores

_WORST_CASES = 8


def sample_predictions(model: torch.nn.Module, split: Split, count: int, pick=None):
    """Predictions for ``count`` images spread evenly over ``split`` (or for the indices ``pick``).

    Returns ``images`` uint8 ``(K, S, S, 3)``, ``truths`` and ``preds`` bool
    ``(K, S, S)``, their ``ids`` and per-image Jaccard ``scores`` (model resolution). The masks are the plain
    network's (:class:`~lesionseg.inference.settings.InferenceSettings` defaults: no TTA, clean-up or zoom), what the
    training curves beside them measure.
    """
    if pick is None:
        pick = np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)
    pick = np.asarray(pick, dtype=int)
    truths = split.masks[pick].bool()
    preds = predict(model, split.images[pick], InferenceSettings()).input_masks()[:, 0]
    scores = per_image_scores(confusion_counts(preds, truths))["jaccard"].tolist()
    return split.images[pick].numpy(), truths.numpy(), preds.numpy(), [split.ids[i] for i in pick], scores


def worst_indices(split: Split, table: pd.DataFrame, count: int = _WORST_CASES) -> list[int]:
    """Indices into ``split`` of the ``count`` images with the lowest scored IoU in ``table`` (per-image CSV)."""
    scores = table.set_index("id")["orig_jaccard"]
    worst = scores[scores.index.isin(split.ids)].nsmallest(count).index
    position = {image_id: i for i, image_id in enumerate(split.ids)}
    return [position[image_id] for image_id in worst]
