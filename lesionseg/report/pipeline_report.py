"""The report stage's outputs: the comparison table (:mod:`~lesionseg.report.comparison_table`) and the
figures (:mod:`~lesionseg.report.figures`) of the pipeline's models, one of them shown on sample images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from lesionseg import atomic
from lesionseg.data.cache import Split
from lesionseg.experiments.model_metrics import ModelMetrics
from lesionseg.report.comparison_table import comparison_table, verdicts, write_table
from lesionseg.report.drawing import error_map, overlay
from lesionseg.report.figures import plot_comparison, plot_curves, plot_grid, plot_risk_coverage, plot_samples
from lesionseg.report.samples import sample_predictions, worst_indices


def load_histories(paths: list[Path]) -> dict[str, pd.DataFrame]:
    """Phase name (file stem) -> history table, from CSV files or folders of them, in the order given."""
    histories = {}
    for entry in map(Path, paths):
        for csv in sorted(entry.glob("*.csv")) if entry.is_dir() else [entry]:
            histories[csv.stem] = pd.read_csv(csv)
    return histories


def _plot_split(
    model: torch.nn.Module,
    split: Split,
    title: str,
    figures: Path,
    prefix: str = "",
    samples: int = 8,
    table: pd.DataFrame | None = None,
) -> None:
    """``<prefix>samples.png``, ``overlays.png`` and ``error_maps.png`` on ``samples`` images spread over
    ``split``; with ``table`` (the model's per-image scores there), ``<prefix>worst.png``: overlays of the
    lowest-scoring images, captioned with their scored IoU (original resolution, evaluation settings)."""
    images, truths, preds, ids, scores = sample_predictions(model, split, samples)
    plot_samples(images, truths, preds, ids, scores, title, figures / f"{prefix}samples.png")
    overlays = [overlay(i, p, t) for i, p, t in zip(images, preds, truths)]
    legend = "prediction yellow, ground truth cyan"
    plot_grid(overlays, ids, scores, f"{title}: {legend}", figures / f"{prefix}overlays.png")
    errors = [error_map(p, t) for p, t in zip(preds, truths)]
    colours = "true positive green, false positive red, false negative blue"
    plot_grid(errors, ids, scores, f"{title}: {colours}", figures / f"{prefix}error_maps.png")
    if table is not None:
        pick = worst_indices(split, table)
        images, truths, preds, ids, _ = sample_predictions(model, split, len(pick), pick)
        scored = table.set_index("id").loc[ids, "orig_jaccard"].tolist()
        overlays = [overlay(i, p, t) for i, p, t in zip(images, preds, truths)]
        plot_grid(overlays, ids, scored, f"{title}: the {len(pick)} worst ({legend})", figures / f"{prefix}worst.png")


def write_pipeline_report(
    model: torch.nn.Module,
    model_name: str,
    test: Split,
    metrics: dict[str, ModelMetrics],
    histories: dict[str, pd.DataFrame],
    figures_dir: Path,
    table_stem: Path,
    samples: int = 8,
    per_image: dict[str, pd.DataFrame] | None = None,
    external: dict[str, Split] | None = None,
    external_per_image: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> None:
    """All report outputs: ``figures_dir`` (curves, samples, overlays, error maps,
    worst cases, comparison chart, the risk-coverage figure of ``model_name`` on the test split and every
    external set; replaced as a whole) and ``table_stem`` ``.md``/``.csv``.

    ``model`` (named ``model_name``) is the one shown on ``samples`` test images.
    ``per_image`` (model -> per-image test scores) adds the paired IoU change
    against the frozen model and a verdict line for each change whose 95%
    interval excludes 0. ``external`` (set name -> prepared split) and
    ``external_per_image`` (set -> model -> per-image scores) add each set's
    columns to the table and its figures (``<set>_samples.png`` and so on).
    """
    external, external_per_image = external or {}, external_per_image or {}
    table = comparison_table(metrics, per_image, external_per_image)
    with atomic.atomic_dir(figures_dir) as figures:
        plot_curves(histories, figures / "curves.png")
        title = f"{model_name} on test images (model resolution {test.size}px)"
        _plot_split(model, test, title, figures, "", samples, (per_image or {}).get(model_name))
        for set_name, split in external.items():
            title = f"{model_name} on {set_name} (model resolution {split.size}px)"
            scored = external_per_image.get(set_name, {}).get(model_name)
            _plot_split(model, split, title, figures, f"{set_name}_", samples, scored)
        plot_comparison(table, figures / "comparison.png")
        splits = {"test": (per_image or {}).get(model_name)}
        splits.update({name: tables.get(model_name) for name, tables in external_per_image.items()})
        title = f"{model_name}: accepted-mask IoU against masks reviewed"
        plot_risk_coverage(splits, title, figures / "risk_coverage.png")
    notes = verdicts(per_image) if per_image else []
    write_table(table, Path(table_stem).with_suffix(".csv"), Path(table_stem).with_suffix(".md"), notes)
