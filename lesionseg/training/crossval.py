"""k-fold cross-validation's training: the pipeline's phases on each fold (:mod:`lesionseg.training.folds`).

Each fold trains the same phases as the pipeline (frozen, then every unfreeze
level from the frozen model); :mod:`lesionseg.evaluation.fold_scores` scores them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lesionseg.model.checkpoint import load_model
from lesionseg.model.model import LesionSegModel, ModelConfig, build_model, level_name
from lesionseg.training.folds import Fold
from lesionseg.training.train import TrainConfig, TrainingJob, TrainResult, seed_everything, train_model

# (phase name, job) -> result: :func:`lesionseg.training.train.train_model` without its optional arguments, or a
# wrapper that also logs the phase.
PhaseRunner = Callable[[str, TrainingJob], TrainResult]


def _plain_runner(name: str, job: TrainingJob) -> TrainResult:
    return train_model(job)


def train_fold(
    fold: Fold,
    model_config: ModelConfig,
    frozen_config: TrainConfig,
    finetune_config: TrainConfig,
    levels: list[int],
    folder: Path,
    runner: PhaseRunner = _plain_runner,
) -> dict[str, Path]:
    """Train the pipeline's phases on one fold: ``frozen``, then ``finetune_<level>`` for each
    level, each from the frozen model. Checkpoints and histories go to ``folder`` (the fold's own:
    one fold is one unit of work, finished or not, so that a killed cross-validation keeps the folds it
    finished). Returns model name -> checkpoint path."""
    folder = Path(folder)

    def phase(name: str, model: LesionSegModel, config: TrainConfig) -> Path:
        """Train one phase with ``runner``; returns its checkpoint."""
        checkpoint, history = folder / f"{name}.pt", folder / f"{name}.csv"
        runner(name, TrainingJob(model, model_config, fold.train, fold.val, config, checkpoint, history))
        return checkpoint

    seed_everything(frozen_config.seed)  # the decoder's initial weights: the same fold model on every run
    checkpoints = {"frozen": phase("frozen", build_model(model_config, unfreeze=0), frozen_config)}
    for level in levels:
        name = f"finetune_{level_name(level)}"
        model, _ = load_model(checkpoints["frozen"], unfreeze=level)
        checkpoints[name] = phase(name, model, finetune_config)
    return checkpoints
