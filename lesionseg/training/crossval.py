"""k-fold cross-validation over the training pairs.

Every training pair is held out exactly once. Inside a fold the other pairs
are split again into training and an inner validation set (the single-split
pipeline's ``val_fraction``), which picks each phase's best epoch, so the
held-out fold never influences the model that is scored on it. Each fold
trains the same phases as the pipeline (frozen, then every unfreeze level
from the frozen model) and scores them on its held-out fold at original
resolution; the out-of-fold per-image scores of all folds together cover
every training pair once, which is what paired comparisons between recipes
use (:mod:`lesionseg.evaluation.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lesionseg.data.cache import Split
from lesionseg.data.prepare import train_val_indices
from lesionseg.evaluation.evaluate import ORIGINAL_PREFIX, evaluate_model
from lesionseg.evaluation.metrics import THRESHOLDED_JACCARD_CUTOFF
from lesionseg.evaluation.postprocess import PostprocessConfig
from lesionseg.model.checkpoint import load_model
from lesionseg.model.model import LesionSegModel, ModelConfig, build_model, level_name
from lesionseg.training.train import TrainConfig, TrainResult, seed_everything, train_model

# Metrics aggregated over folds (original resolution, the official definitions).
CV_METRICS = ("jaccard", "dice", "jaccard_thresholded")


@dataclass(frozen=True)
class CrossValConfig:
    """``folds``: number of folds (0 = off, else at least 2); ``seed``: seed of the
    fold assignment; ``val_fraction``: share of a fold's training pairs held out
    as its inner validation set (chooses the best epoch)."""

    folds: int = 0
    seed: int = 42
    val_fraction: float = 0.1

    def __post_init__(self):
        if not isinstance(self.folds, int) or self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (off) or an integer >= 2, got {self.folds!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")

    @property
    def enabled(self) -> bool:
        return self.folds > 0


def fold_assignment(areas, folds: int, seed: int) -> np.ndarray:
    """Fold index (``0 .. folds - 1``) of each pair, stratified by lesion area.

    Pairs are ordered by lesion area (``areas``, one number per pair; ties keep
    their order) and each run of ``folds`` consecutive pairs is dealt to the
    folds in a seeded random order: every fold gets small, medium and large
    lesions alike, and fold sizes differ by at most one.
    """
    areas = np.asarray(areas)
    if folds < 2 or folds > len(areas):
        raise ValueError(f"cannot make {folds} folds of {len(areas)} pairs")
    rng = np.random.default_rng(seed)
    order = np.argsort(areas, kind="stable")
    assignment = np.empty(len(areas), dtype=np.int64)
    for start in range(0, len(order), folds):
        block = order[start : start + folds]
        assignment[block] = rng.permutation(folds)[: len(block)]
    return assignment


@dataclass
class Fold:
    """One fold's data: ``train`` and inner ``val`` (best-epoch choice) from the other folds; ``heldout`` is scored."""

    index: int
    train: Split
    val: Split
    heldout: Split


def make_folds(pairs: Split, config: CrossValConfig) -> list[Fold]:
    """The ``config.folds`` folds of ``pairs`` (all training pairs), stratified by lesion area."""
    assignment = fold_assignment(pairs.masks.flatten(1).sum(1).numpy(), config.folds, config.seed)
    folds = []
    for k in range(config.folds):
        rest = np.flatnonzero(assignment != k)
        train_idx, val_idx = train_val_indices(len(rest), config.val_fraction, config.seed + k)
        folds.append(
            Fold(
                k,
                pairs.subset(rest[train_idx]),
                pairs.subset(rest[val_idx]),
                pairs.subset(np.flatnonzero(assignment == k)),
            )
        )
    return folds


# (name, model, model_config, train split, validation split, config, checkpoint path, history path) -> result;
# :func:`lesionseg.training.train.train_model` without its optional arguments, or a wrapper that also logs the phase.
PhaseRunner = Callable[[str, LesionSegModel, ModelConfig, Split, Split, TrainConfig, Path, Path], TrainResult]


def plain_runner(name, model, model_config, train, val, config, checkpoint_path, history_path) -> TrainResult:
    return train_model(model, model_config, train, val, config, checkpoint_path, history_path)


def train_fold(
    fold: Fold,
    model_config: ModelConfig,
    frozen_config: TrainConfig,
    finetune_config: TrainConfig,
    levels: list[int],
    out_dir: Path,
    runner: PhaseRunner = plain_runner,
) -> dict[str, Path]:
    """Train the pipeline's phases on one fold: ``frozen``, then ``finetune_<level>`` for each
    level, each from the frozen model. Checkpoints and histories go to ``out_dir/fold<k>/``.
    Returns model name -> checkpoint path."""
    folder = Path(out_dir) / f"fold{fold.index}"
    checkpoints = {"frozen": folder / "frozen.pt"}
    seed_everything(frozen_config.seed)  # the decoder's initial weights: the same fold model on every run
    model = build_model(model_config, unfreeze=0)
    runner(
        "frozen", model, model_config, fold.train, fold.val, frozen_config, checkpoints["frozen"], folder / "frozen.csv"
    )
    for level in levels:
        name = f"finetune_{level_name(level)}"
        model, _ = load_model(checkpoints["frozen"], unfreeze=level)
        checkpoints[name] = folder / f"{name}.pt"
        runner(
            name, model, model_config, fold.train, fold.val, finetune_config, checkpoints[name], folder / f"{name}.csv"
        )
    return checkpoints


def score_heldout(
    checkpoints: dict[str, Path],
    fold: Fold,
    batch_size: int = 32,
    device=None,
    tta: bool = False,
    postprocess: PostprocessConfig = PostprocessConfig(),
) -> dict[str, pd.DataFrame]:
    """Model name -> per-image table of that fold model on its held-out pairs (with a ``fold`` column)."""
    tables = {}
    for name, path in checkpoints.items():
        model, _ = load_model(path)
        _, table = evaluate_model(
            model.to(device) if device else model, fold.heldout, batch_size, device, tta, postprocess
        )
        table.insert(1, "fold", fold.index)
        tables[name] = table
    return tables


def summarize_folds(table: pd.DataFrame) -> dict:
    """CV summary of one model's out-of-fold per-image table (``fold`` and ``orig_*`` columns).

    For each metric in :data:`CV_METRICS` at original resolution: the per-fold
    means (``fold<k>``), their ``mean`` and standard error ``se``
    (sample SD of the fold means / sqrt(folds)), and ``n`` pairs in all.
    Thresholded Jaccard is computed from per-image Jaccard as in
    :func:`lesionseg.evaluation.metrics.summarize`.
    """
    jaccard = table[ORIGINAL_PREFIX + "jaccard"]
    columns = {
        "jaccard": jaccard,
        "dice": table[ORIGINAL_PREFIX + "dice"],
        "jaccard_thresholded": jaccard.where(jaccard >= THRESHOLDED_JACCARD_CUTOFF, 0.0),
    }
    summary = {"n": int(len(table)), "folds": int(table["fold"].nunique())}
    for metric in CV_METRICS:
        per_fold = columns[metric].groupby(table["fold"]).mean()
        entry = {f"fold{int(k)}": float(v) for k, v in per_fold.items()}
        entry["mean"] = float(per_fold.mean())
        entry["se"] = float(per_fold.std(ddof=1) / math.sqrt(len(per_fold))) if len(per_fold) > 1 else float("nan")
        summary[ORIGINAL_PREFIX + metric] = entry
    return summary
