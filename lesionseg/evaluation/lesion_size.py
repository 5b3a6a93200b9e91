"""Scores by lesion size: the share of its image each true lesion covers, and the size bins reported.

Small lesions are where the model fails most on other clinics' images (a lesion covering 3% of the frame
is about 20 pixels across at 128 x 128), so evaluation reports the mean IoU per size bin beside the overall
mean, and ``lesionseg compare --by-size`` pairs the images of each bin. The bin of an image depends only
on its ground-truth mask, so both sides of a paired comparison put every image in the same bin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LESION_SHARE_COLUMN = "lesion_share"  # per-image table: true lesion pixels / image pixels, original resolution

# (metric-key suffix, label, lower bound inclusive, upper bound exclusive) of each bin, smallest first.
_SIZE_BINS = (
    ("size_lt5", "lesion < 5%", 0.0, 0.05),
    ("size_5_15", "lesion 5-15%", 0.05, 0.15),
    ("size_15_40", "lesion 15-40%", 0.15, 0.40),
    ("size_ge40", "lesion >= 40%", 0.40, np.inf),
)


def lesion_share(lesion_pixels, image_pixels) -> np.ndarray:
    """Per image, the share of the image its true lesion covers: float ``(N,)`` in ``[0, 1]``."""
    lesion_pixels, image_pixels = np.asarray(lesion_pixels, dtype=float), np.asarray(image_pixels, dtype=float)
    return lesion_pixels / np.maximum(image_pixels, 1)


def _size_bin_rows(table: pd.DataFrame, source: str = "") -> dict[str, np.ndarray]:
    """Bin label -> bool ``(N,)`` selecting ``table``'s rows in that bin (every row in exactly one bin).
    ``ValueError`` naming ``source`` when the table has no :data:`LESION_SHARE_COLUMN` (written by an
    evaluation before sizes were recorded: re-run it)."""
    if LESION_SHARE_COLUMN not in table.columns:
        raise ValueError(
            f"{source or 'per-image table'}: no {LESION_SHARE_COLUMN!r} column, so no lesion sizes "
            "(a table from before they were recorded: re-run its evaluation)"
        )
    share = table[LESION_SHARE_COLUMN].to_numpy(dtype=float)
    return {label: (share >= low) & (share < high) for _, label, low, high in _SIZE_BINS}


def size_bin_scores(table: pd.DataFrame, metric: str = "orig_jaccard") -> dict[str, float]:
    """The mean ``metric`` over each bin's images, keyed ``<metric>_<bin suffix>`` (e.g.
    ``orig_jaccard_size_lt5``); a bin without images is left out (metrics.json holds numbers only)."""
    rows = _size_bin_rows(table)
    values = table[metric].to_numpy(dtype=float)
    return {
        f"{metric}_{key}": float(values[rows[label]].mean()) for key, label, _, _ in _SIZE_BINS if rows[label].any()
    }


def split_by_size(evaluations: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict[str, pd.DataFrame]]:
    """Evaluation -> model -> per-image table, with after each evaluation one evaluation per non-empty size
    bin (``"<evaluation>, lesion < 5%"``, ...) holding only that bin's rows."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for evaluation, tables in evaluations.items():
        out[evaluation] = tables
        binned: dict[str, dict[str, pd.DataFrame]] = {}
        for model, table in tables.items():
            for label, rows in _size_bin_rows(table, f"{model} on {evaluation}").items():
                if rows.any():
                    binned.setdefault(f"{evaluation}, {label}", {})[model] = table[rows]
        out.update(sorted(binned.items(), key=lambda item: _bin_order(item[0])))
    return out


def _bin_order(evaluation: str) -> int:
    return next(i for i, (_, label, _, _) in enumerate(_SIZE_BINS) if evaluation.endswith(label))
