"""The report's comparison table (one row per model: test and external scores, paired changes with their
95% intervals), the verdict lines under it, and its CSV and Markdown files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesionseg import atomic
from lesionseg.evaluation.evaluate import CALIBRATED_SUFFIX
from lesionseg.evaluation.stats import IndependentComparison, format_change, independent_difference
from lesionseg.experiments.compare import NO_CHANGE, paired_change, verdict
from lesionseg.experiments.model_metrics import ModelMetrics

_COMPARISON_COLUMNS = {
    "model": "Model",
    "lr": "Learning rate",
    "loss": "Test loss",
    "orig_jaccard": "IoU (Jaccard)",
    "orig_dice": "Dice",
    "orig_jaccard_thresholded": "Thresholded IoU",
    "params_trainable": "Trainable params",
    "params_frozen": "Frozen params",
    "params_total": "Total params",
}

_CHANGE_COLUMN = "IoU change vs frozen [95% CI]"
_DROP_COLUMN = "IoU change vs test [95% CI]"
_CALIBRATION_COLUMN = "IoU change vs as trained [95% CI]"  # a calibrated set's, paired on its held-out images
_BASELINE_MODEL = "frozen"


def comparison_table(
    metrics: dict[str, ModelMetrics],
    per_image: dict[str, pd.DataFrame] | None = None,
    external_per_image: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> pd.DataFrame:
    """One row per model of ``metrics`` (``reports/metrics.json``'s records): original-resolution IoU/Dice on the
    test split, learning rate, parameter counts.

    With ``per_image`` (model -> per-image table), ``IoU change vs frozen [95% CI]``: each model's paired change
    against the frozen model. Each external set adds its IoU and, with ``external_per_image`` (set -> model ->
    table), its drop from the test split with a 95% interval (independent samples); a calibrated set
    (``<set>_calibrated``) adds its paired change from ``<set>`` on the same held-out images.
    """
    rows = [
        {"model": name, "lr": _known(m.lr), **m.test, **{f"params_{k}": v for k, v in m.params.items()}}
        for name, m in metrics.items()
    ]
    table = pd.DataFrame(rows).reindex(columns=list(_COMPARISON_COLUMNS)).rename(columns=_COMPARISON_COLUMNS)
    if per_image and _BASELINE_MODEL in per_image:
        table[_CHANGE_COLUMN] = [
            format_change(_change_from_baseline(per_image, name)) if name in per_image else ""
            for name in table["Model"]
        ]
    set_names = dict.fromkeys(n for m in metrics.values() for n in m.external)
    for set_name in set_names:
        table[f"{set_name} IoU"] = [
            m.external.get(set_name, {}).get("orig_jaccard", float("nan")) for m in metrics.values()
        ]
        tables = (external_per_image or {}).get(set_name, {})
        if per_image and tables:
            table[f"{set_name} {_DROP_COLUMN}"] = [
                format_change(drop(per_image[m], tables[m])) if m in per_image and m in tables else "" for m in metrics
            ]
        as_trained = (external_per_image or {}).get(set_name.removesuffix(CALIBRATED_SUFFIX), {})
        if set_name.endswith(CALIBRATED_SUFFIX) and tables and as_trained:
            table[f"{set_name} {_CALIBRATION_COLUMN}"] = [
                format_change(paired_change(as_trained[m], tables[m], "orig_jaccard", f"{m} on {set_name}"))
                if m in as_trained and m in tables
                else ""
                for m in metrics
            ]
    return table


def _known(value) -> float:
    return float("nan") if value is None else value  # NaN: an empty cell (e.g. the ensemble's learning rate)


def drop(test_table: pd.DataFrame, external_table: pd.DataFrame) -> IndependentComparison:
    """A model's per-image IoU on an external set against the test split (negative: a drop)."""
    return independent_difference(test_table["orig_jaccard"], external_table["orig_jaccard"])


def _change_from_baseline(per_image: dict[str, pd.DataFrame], name: str, base: str = _BASELINE_MODEL):
    """Per-image test IoU (original resolution) of model ``name`` against model ``base``, paired by image
    (:func:`~lesionseg.experiments.compare.paired_change`)."""
    return paired_change(per_image[base], per_image[name], "orig_jaccard", f"{name} vs {base} on test")


def verdicts(per_image: dict[str, pd.DataFrame], base: str = _BASELINE_MODEL) -> list[str]:
    """One line per model whose IoU change against ``base`` has a 95% interval that excludes 0."""
    lines = []
    for name in per_image:
        if name == base or base not in per_image:
            continue
        change = _change_from_baseline(per_image, name, base)
        if verdict(change) != NO_CHANGE:
            lines.append(
                f"{name} is {verdict(change)} than {base}: per-image IoU {format_change(change)}, "
                f"n = {change.n}, Wilcoxon p = {change.p_value:.2g}."
            )
    return lines


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not defined for this model (e.g. the ensemble's learning rate)
            return ""
        if value.is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) < 0.01 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_table(table: pd.DataFrame, csv_path: Path, md_path: Path, notes: list[str] = ()) -> None:
    """CSV, and Markdown with ``notes`` (e.g. :func:`verdicts`) as lines under the table."""
    atomic.write_text(csv_path, table.to_csv(index=False))
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    extra = ["", *notes] if notes else []
    atomic.write_text(md_path, "\n".join([header, rule, *body, *extra]) + "\n")
