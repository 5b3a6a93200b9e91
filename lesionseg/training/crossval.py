"""k-fold cross-validation's training: the pipeline's phases on each fold (:mod:`lesionseg.training.folds`).

Each fold trains the same phases as the pipeline (frozen, then every unfreeze
level from the frozen model); :mod:`lesionseg.evaluation.crossval` scores them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lesionseg.data.cache import Split
from lesionseg.model.checkpoint import load_model
from lesionseg.model.model import LesionSegModel, ModelConfig, build_model, level_name
from lesionseg.training.folds import Fold
from lesionseg.training.train import TrainConfig, TrainResult, seed_everything, train_model

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
    folder: Path,
    runner: PhaseRunner = plain_runner,
) -> dict[str, Path]:
    """Train the pipeline's phases on one fold: ``frozen``, then ``finetune_<level>`` for each
    level, each from the frozen model. Checkpoints and histories go to ``folder`` (the fold's own:
    one fold is one unit of work, finished or not, so that a killed cross-validation keeps the folds it
    finished). Returns model name -> checkpoint path."""
    folder = Path(folder)
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
