"""k-fold cross-validation's folds: which training pairs each fold trains on, validates on and holds out.

Every training pair is held out exactly once. Inside a fold the other pairs
are split again into training and an inner validation set (the single-split
pipeline's ``val_fraction``), which picks each phase's best epoch, so the
held-out fold never influences the model that is scored on it. The folds are
written beside the fold models as image ids (:func:`fold_manifest`), so that
scoring them (:mod:`lesionseg.evaluation.fold_scores`) never re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.data.cache import Split
from lesionseg.data.prepare import train_val_indices


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


def _fold_assignment(areas, folds: int, seed: int) -> np.ndarray:
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
    assignment = _fold_assignment(pairs.masks.flatten(1).sum(1).numpy(), config.folds, config.seed)
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


def fold_manifest(folds: list[Fold]) -> dict:
    """The folds as image ids (``train``, ``val``, ``heldout`` per fold): what scoring the fold models needs,
    written beside them so that scoring never re-derives the assignment."""
    return {
        "folds": len(folds),
        "assignment": [
            {"fold": f.index, "train": list(f.train.ids), "val": list(f.val.ids), "heldout": list(f.heldout.ids)}
            for f in folds
        ],
    }


def folds_from_manifest(pairs: Split, manifest: dict) -> list[Fold]:
    """The :class:`Fold` s of a :func:`fold_manifest` over ``pairs``; an id not among them raises ``ValueError``."""
    position = {isic_id: i for i, isic_id in enumerate(pairs.ids)}

    def pick(ids: list[str]) -> Split:
        missing = [i for i in ids if i not in position]
        if missing:
            raise ValueError(f"the fold manifest names {len(missing)} pairs the data lacks, e.g. {missing[:3]}")
        return pairs.subset([position[i] for i in ids])

    return [
        Fold(entry["fold"], pick(entry["train"]), pick(entry["val"]), pick(entry["heldout"]))
        for entry in manifest["assignment"]
    ]


def fold_checkpoints(out_dir: Path, fold: int) -> dict[str, Path]:
    """Model name -> checkpoint of one trained fold (``frozen`` first, then the levels in order)."""
    folder = Path(out_dir) / f"fold{fold}"
    order = {"frozen": 0, "finetune_1": 1, "finetune_2": 2, "finetune_3": 3, "finetune_all": 4}
    return {p.stem: p for p in sorted(folder.glob("*.pt"), key=lambda p: order.get(p.stem, 9))}
