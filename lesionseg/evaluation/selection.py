"""Choose one model among a pipeline's checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lesionseg.model.checkpoint import read_checkpoint

_BEST_FINETUNED = "best"


def choose_model(checkpoints: dict[str, Path], which: str = _BEST_FINETUNED) -> str:
    """Name of the chosen model among ``checkpoints`` (name -> path).

    ``which`` is a model name (``frozen``, ``finetune_all``, ...) or ``best``:
    the fine-tuned model with the highest validation Jaccard (the frozen model
    if nothing was fine-tuned). Test metrics never take part in the choice.
    """
    if which != _BEST_FINETUNED:
        if which not in checkpoints:
            raise ValueError(f"model {which!r} not found; available: {sorted(checkpoints)} or {_BEST_FINETUNED!r}")
        return which
    if not checkpoints:
        raise ValueError("no checkpoints to choose from")
    return best_finetuned(checkpoints, lambda name: read_checkpoint(checkpoints[name])["metrics"]["jaccard"])


def best_finetuned(models: Iterable[str], score: Callable[[str], float]) -> str:
    """The rule that picks the pipeline's best model: among ``models`` (names), the fine-tuned one with the
    highest ``score`` (the frozen model if nothing was fine-tuned); the first of equals.

    :func:`choose_model` ranks by validation Jaccard, the cross-validation ensemble
    (:mod:`lesionseg.evaluation.crossval_results`) by CV Jaccard. ``score`` is a function, not a table, so that
    only the candidates are scored (the frozen checkpoint is not read when a fine-tuned model exists)."""
    names = list(models)
    candidates = [name for name in names if name != "frozen"] or names
    if not candidates:
        raise ValueError("no models to choose from")
    return max(candidates, key=score)


def pipeline_checkpoints(frozen: Path, finetuned: Path) -> dict[str, Path]:
    """Model name -> checkpoint: ``frozen`` first, then each ``finetune_*`` in level order."""
    order = {"finetune_1": 1, "finetune_2": 2, "finetune_3": 3, "finetune_all": 4}
    tuned = sorted(Path(finetuned).glob("finetune_*.pt"), key=lambda p: order.get(p.stem, 9))
    return {"frozen": Path(frozen), **{p.stem: p for p in tuned}}
