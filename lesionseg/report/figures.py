"""The report's matplotlib figures, drawn from arrays and tables: training curves, sample rows, panel grids,
the model comparison chart and the risk-coverage figure (the arrays themselves: :mod:`lesionseg.report.drawing`,
which needs no matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lesionseg import atomic  # noqa: E402
from lesionseg.evaluation.review import IOU_COLUMN, QUALITY_COLUMN, REVIEW_COLUMN, risk_coverage  # noqa: E402


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
