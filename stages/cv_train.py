"""Stage cv_train: k-fold cross-validation's training (``cv.folds``; 0 = off).

Each fold trains the pipeline's phases (frozen, then every ``finetune.unfreeze``
level) on the other folds' pairs, its best epochs chosen on an inner
validation split. Writes the fold checkpoints and histories
(``<models>/fold<k>/``) and ``<models>/folds.json``: the image ids of every
fold's training, inner-validation and held-out pairs, which the
``cv_score`` stage scores (so an inference-only change re-scores without
retraining). With folds off it writes ``folds.json`` alone, at once.

MLflow: one child run ``cv`` under the execution's parent run, with one child
run per fold and phase (``fold<k>/<model>``).
"""

import argparse
from pathlib import Path

from lesionseg import atomic
from stages.launch import main, work
from stages.params import build, get, load_params


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="output folder of fold checkpoints")
    args = parser.parse_args()
    params = load_params()
    # Off (the default): the manifest alone, at once, without importing torch, MLflow or the training stack.
    if type(get(params, "cv.folds")) is int and get(params, "cv.folds") == 0:
        with atomic.atomic_dir(args.models) as models_dir:
            atomic.write_json(models_dir / "folds.json", {"folds": 0, "assignment": []})
        return
    from lesionseg.training.folds import CrossValConfig

    config = build(CrossValConfig, params, "cv", val_fraction=get(params, "data.val_fraction"))
    with atomic.atomic_dir(args.models) as models_dir:
        train_folds(params, config, args.data, models_dir)


def train_folds(params: dict, config, data: Path, models_dir: Path) -> None:
    """Train every fold (``config``: a :class:`~lesionseg.training.crossval.CrossValConfig`) into ``models_dir``."""
    import mlflow

    from lesionseg import tracking
    from lesionseg.data.cache import Split
    from lesionseg.training.crossval import train_fold
    from lesionseg.training.folds import fold_manifest, make_folds
    from stages.configs import model_config, train_config, unfreeze_levels
    from stages.runlog import mlflow_setup, run_tags

    arch = model_config(params)
    frozen_config, finetune_config = train_config(params, "train"), train_config(params, "finetune")
    levels = unfreeze_levels(get(params, "finetune.unfreeze"))
    folds = make_folds(Split.concat([Split.load(data / "train.pt"), Split.load(data / "val.pt")]), config)

    parent = mlflow_setup(params)
    with tracking.start_run("cv", run_tags("cv"), parent_run_id=parent) as run:
        mlflow.log_params({"folds": config.folds, "seed": config.seed, "pairs": sum(len(f.heldout) for f in folds)})
        cv_run = run.info.run_id
    for fold in folds:
        with work(fold=fold.index):
            train_fold(fold, arch, frozen_config, finetune_config, levels, models_dir, _logger(fold.index, cv_run))
    manifest = {**fold_manifest(folds), "seed": config.seed, "mlflow_run_id": cv_run}
    atomic.write_json(models_dir / "folds.json", manifest)


def _logger(fold: int, cv_run: str):
    """A phase runner that trains and logs the phase as ``fold<k>/<model>`` under the ``cv`` run."""
    from lesionseg.training.phases import train_phase
    from stages.runlog import run_tags

    def runner(name, model, arch, train, val, config, checkpoint, history):
        tags = {**run_tags(name), "lesionseg.fold": fold}
        return train_phase(f"fold{fold}/{name}", model, arch, train, val, config, checkpoint, history, tags, cv_run)

    return runner


if __name__ == "__main__":
    main(run)
