"""Report figures and tables: curves, samples, overlays, error maps, comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lesionseg import atomic  # noqa: E402
from lesionseg.data.cache import Split  # noqa: E402
from lesionseg.evaluation.compare import NO_CHANGE, paired_change, verdict  # noqa: E402
from lesionseg.evaluation.drawing import error_map, overlay  # noqa: E402
from lesionseg.evaluation.evaluate import CALIBRATED_SUFFIX  # noqa: E402
from lesionseg.evaluation.records import ModelMetrics  # noqa: E402
from lesionseg.evaluation.review import IOU_COLUMN, QUALITY_COLUMN, REVIEW_COLUMN, risk_coverage  # noqa: E402
from lesionseg.evaluation.stats import IndependentComparison, format_change, independent_difference  # noqa: E402
from lesionseg.metrics import confusion_counts, per_image_scores  # noqa: E402
from lesionseg.model.inference import predict_uint8  # noqa: E402

COMPARISON_COLUMNS = {
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

CHANGE_COLUMN = "IoU change vs frozen [95% CI]"
DROP_COLUMN = "IoU change vs test [95% CI]"
CALIBRATION_COLUMN = "IoU change vs as trained [95% CI]"  # a calibrated set's, paired on its held-out images
WORST_CASES = 8
BASELINE_MODEL = "frozen"


def comparison_table(
    metrics: dict[str, ModelMetrics],
    per_image: dict[str, pd.DataFrame] | None = None,
    external_per_image: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> pd.DataFrame:
    """One row per model of ``metrics`` (``reports/metrics.json``'s records): official, original-resolution
    IoU/Dice on the test split, learning rate, parameter counts.

    With ``per_image`` tables (model -> the evaluate stage's per-image CSV),
    the column ``IoU change vs frozen [95% CI]`` holds each model's paired
    change of per-image IoU against the frozen model (see :mod:`lesionseg.evaluation.stats`).
    Every external set in a model's metrics adds a column of its IoU and,
    with ``external_per_image`` (set -> model -> table), one of the drop from
    the test split's IoU with its 95% interval (independent samples). A set calibrated on a few of its images
    (``<set>_calibrated``) adds, with both sets' tables, the paired change from ``<set>`` (the same held-out
    images as trained).
    """
    rows = [
        {"model": name, "lr": _known(m.lr), **m.test, **{f"params_{k}": v for k, v in m.params.items()}}
        for name, m in metrics.items()
    ]
    table = pd.DataFrame(rows).reindex(columns=list(COMPARISON_COLUMNS)).rename(columns=COMPARISON_COLUMNS)
    if per_image and BASELINE_MODEL in per_image:
        table[CHANGE_COLUMN] = [
            format_change(change_from_baseline(per_image, name)) if name in per_image else "" for name in table["Model"]
        ]
    set_names = dict.fromkeys(n for m in metrics.values() for n in m.external)
    for set_name in set_names:
        table[f"{set_name} IoU"] = [
            m.external.get(set_name, {}).get("orig_jaccard", float("nan")) for m in metrics.values()
        ]
        tables = (external_per_image or {}).get(set_name, {})
        if per_image and tables:
            table[f"{set_name} {DROP_COLUMN}"] = [
                format_change(drop(per_image[m], tables[m])) if m in per_image and m in tables else "" for m in metrics
            ]
        as_trained = (external_per_image or {}).get(set_name.removesuffix(CALIBRATED_SUFFIX), {})
        if set_name.endswith(CALIBRATED_SUFFIX) and tables and as_trained:
            table[f"{set_name} {CALIBRATION_COLUMN}"] = [
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


def change_from_baseline(per_image: dict[str, pd.DataFrame], name: str, base: str = BASELINE_MODEL):
    """Per-image test IoU (original resolution) of model ``name`` against model ``base``, paired by image
    (:func:`~lesionseg.evaluation.compare.paired_change`)."""
    return paired_change(per_image[base], per_image[name], "orig_jaccard", f"{name} vs {base} on test")


def verdicts(per_image: dict[str, pd.DataFrame], base: str = BASELINE_MODEL) -> list[str]:
    """One line per model whose IoU change against ``base`` has a 95% interval that excludes 0."""
    lines = []
    for name in per_image:
        if name == base or base not in per_image:
            continue
        change = change_from_baseline(per_image, name, base)
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


def save_figure(fig, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip("."))
    plt.close(fig)


def plot_curves(histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Train/validation loss and Jaccard per epoch, one line pair per phase, phases end to end."""
    fig, (ax_loss, ax_jac) = plt.subplots(1, 2, figsize=(12, 4.2))
    offset = 0
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = history["epoch"] + offset
        # Markers: a 1- or 2-epoch run still shows its points.
        ax_loss.plot(epochs, history["train_loss"], "--", marker=".", color=colour, label=f"{name} train")
        ax_loss.plot(epochs, history["val_loss"], "-", marker="o", ms=3, color=colour, label=f"{name} val")
        ax_jac.plot(epochs, history["train_jaccard"], "--", marker=".", color=colour, label=f"{name} train")
        ax_jac.plot(epochs, history["val_jaccard"], "-", marker="o", ms=3, color=colour, label=f"{name} val")
        if name == "frozen":
            offset = int(history["epoch"].max())
    ax_loss.set(title="DiceBCE loss", xlabel="epoch (fine-tuning continues after the frozen phase)", ylabel="loss")
    ax_jac.set(title="Per-image Jaccard (model resolution)", xlabel="epoch", ylabel="Jaccard")
    ax_jac.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_samples(images, truths, preds, ids, scores, title: str, path: Path) -> None:
    """Rows of image | ground truth | prediction."""
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
    for row, (image, truth, pred, isic_id, score) in enumerate(zip(images, truths, preds, ids, scores)):
        for ax, data, label in zip(
            axes[row], (image, truth, pred), ("image", "ground truth", f"prediction J={score:.3f}")
        ):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, vmin=0, vmax=1 if data.ndim == 2 else None)
            ax.set_title(f"{isic_id}: {label}" if label == "image" else label, fontsize=8)
            ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_grid(panels, ids, scores, title: str, path: Path, columns: int = 4) -> None:
    """A grid of RGB panels (overlays or error maps), captioned with ID and Jaccard."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel, isic_id, score in zip(axes.flat, panels, ids, scores):
        ax.imshow(panel)
        ax.set_title(f"{isic_id}  J={score:.3f}", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_comparison(table: pd.DataFrame, path: Path) -> None:
    """Bar chart of test IoU and Dice per model."""
    fig, ax = plt.subplots(figsize=(1.6 * len(table) + 3, 4))
    x = np.arange(len(table))
    for offset, column in ((-0.2, "IoU (Jaccard)"), (0.2, "Dice")):
        bars = ax.bar(x + offset, table[column], width=0.4, label=column)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    low = float(min(table["IoU (Jaccard)"].min(), table["Dice"].min()))
    ax.set(xticks=x, xticklabels=table["Model"], ylim=(max(0.0, low - 0.1), 1.0), ylabel="per-image mean (test)")
    ax.set_title("Test IoU and Dice by model (original resolution, ISIC definition)")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_risk_coverage(tables: dict[str, pd.DataFrame], title: str, path: Path) -> bool:
    """The risk-coverage figure: per split or set (label -> per-image table with ``quality`` and
    ``orig_jaccard``), the mean IoU of the masks accepted against the share reviewed (least quality first),
    with a dot where the model's review threshold puts it (the tables' ``review`` column). Tables without
    a quality column are left out; returns False (and writes nothing) if none has one."""
    scored = {label: t for label, t in tables.items() if t is not None and QUALITY_COLUMN in t.columns}
    if not scored:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, table in scored.items():
        reviewed, accepted = risk_coverage(table[QUALITY_COLUMN], table[IOU_COLUMN])
        (line,) = ax.plot(reviewed, accepted, label=f"{label} (n={len(table)})")
        if REVIEW_COLUMN in table.columns:
            flagged = table[REVIEW_COLUMN].astype(bool)
            if (~flagged).any():
                ax.plot(flagged.mean(), table.loc[~flagged, IOU_COLUMN].mean(), "o", color=line.get_color())
    ax.set(xlabel="share of masks reviewed (lowest quality first)", ylabel="mean IoU of the accepted masks")
    ax.set_xlim(0, 1)
    ax.set_title(f"{title}\n(dot: the model's review threshold)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)
    return True


def sample_predictions(model: torch.nn.Module, split: Split, count: int, pick=None):
    """Predictions for ``count`` images spread evenly over ``split`` (or for the indices ``pick``).

    Returns ``images`` uint8 ``(K, S, S, 3)``, ``truths`` and ``preds`` bool
    ``(K, S, S)``, their ``ids`` and per-image Jaccard ``scores`` (model resolution).
    """
    if pick is None:
        pick = np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)
    pick = np.asarray(pick, dtype=int)
    truths = split.masks[pick].bool()
    preds = (predict_uint8(model, split.images[pick]) > 0)[:, 0]
    scores = per_image_scores(confusion_counts(preds, truths))["jaccard"].tolist()
    return split.images[pick].numpy(), truths.numpy(), preds.numpy(), [split.ids[i] for i in pick], scores


def load_histories(paths: list[Path]) -> dict[str, pd.DataFrame]:
    """Phase name (file stem) -> history table, from CSV files or folders of them, in the order given."""
    histories = {}
    for entry in map(Path, paths):
        for csv in sorted(entry.glob("*.csv")) if entry.is_dir() else [entry]:
            histories[csv.stem] = pd.read_csv(csv)
    return histories


def worst_indices(split: Split, table: pd.DataFrame, count: int = WORST_CASES) -> list[int]:
    """Indices into ``split`` of the ``count`` images with the lowest scored IoU in ``table`` (per-image CSV)."""
    scores = table.set_index("id")["orig_jaccard"]
    worst = scores[scores.index.isin(split.ids)].nsmallest(count).index
    position = {image_id: i for i, image_id in enumerate(split.ids)}
    return [position[image_id] for image_id in worst]


def plot_split(
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


def write_report(
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
        plot_split(model, test, title, figures, "", samples, (per_image or {}).get(model_name))
        for set_name, split in external.items():
            title = f"{model_name} on {set_name} (model resolution {split.size}px)"
            scored = external_per_image.get(set_name, {}).get(model_name)
            plot_split(model, split, title, figures, f"{set_name}_", samples, scored)
        plot_comparison(table, figures / "comparison.png")
        splits = {"test": (per_image or {}).get(model_name)}
        splits.update({name: tables.get(model_name) for name, tables in external_per_image.items()})
        title = f"{model_name}: accepted-mask IoU against masks reviewed"
        plot_risk_coverage(splits, title, figures / "risk_coverage.png")
    notes = verdicts(per_image) if per_image else []
    write_table(table, Path(table_stem).with_suffix(".csv"), Path(table_stem).with_suffix(".md"), notes)
