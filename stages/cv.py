"""Stage cv: k-fold cross-validation of the recipe over all training pairs (``cv.folds``; 0 = off).

Each fold trains the pipeline's phases (frozen, then every ``finetune.unfreeze``
level) and scores them on its held-out pairs with the ``evaluate`` settings.
Writes the fold checkpoints and ``ensemble.json`` (the fold models of the
fine-tuned level with the best CV Jaccard, for the evaluate stage's
``cv_ensemble`` row), the out-of-fold per-image tables, and per model the
per-fold scores with their mean and standard error. With folds off it writes
the same outputs, empty, at once.

MLflow: one child run ``cv`` under the execution's parent run, with the CV
summary as metrics and one child run per fold and phase (``fold<k>/<model>``).
"""

import argparse
import contextlib
import functools
from pathlib import Path

from lesionseg import atomic
from stages.common import (
    build,
    get,
    load_params,
    main,
    mlflow_setup,
    model_config,
    run_tags,
    train_config,
    unfreeze_levels,
    work,
)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="output folder of fold checkpoints")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    # Off (the default): empty outputs at once, without importing torch, MLflow or the training stack.
    off = type(get(params, "cv.folds")) is int and get(params, "cv.folds") == 0
    if not off:
        from lesionseg.training.crossval import CrossValConfig

        config = build(CrossValConfig, params, "cv", val_fraction=get(params, "data.val_fraction"))
    with contextlib.ExitStack() as stack:
        models_dir = stack.enter_context(atomic.atomic_dir(args.models))
        per_image_dir = stack.enter_context(atomic.atomic_dir(args.per_image))
        # Written either way, so no output folder is ever empty (DVC warns about empty outputs).
        atomic.write_json(
            per_image_dir / "folds.json", {"folds": get(params, "cv.folds"), "seed": get(params, "cv.seed")}
        )
        if off:
            atomic.write_json(models_dir / "ensemble.json", {"folds": 0, "model": None, "checkpoints": []})
            atomic.write_json(args.metrics, {})
            return
        cross_validate(params, config, args.data, models_dir, per_image_dir, args.metrics)


def cross_validate(params, config, data: Path, models_dir: Path, per_image_dir: Path, metrics_path):
    """Train and score every fold (``config``: a :class:`~lesionseg.training.crossval.CrossValConfig`)."""
    import mlflow
    import pandas as pd

    from lesionseg import tracking
    from lesionseg.data.cache import Split
    from lesionseg.evaluation.postprocess import PostprocessConfig
    from lesionseg.model.inference import select_device
    from lesionseg.model.model import level_name
    from lesionseg.training.crossval import make_folds, score_heldout, summarize_folds, train_fold

    arch = model_config(params)
    frozen_config, finetune_config = train_config(params, "train"), train_config(params, "finetune")
    levels = unfreeze_levels(get(params, "finetune.unfreeze"))
    postprocess = build(PostprocessConfig, params, "evaluate")
    tta, batch_size = get(params, "evaluate.tta"), get(params, "evaluate.batch_size")
    device = select_device(get(params, "runtime.device"))
    folds = make_folds(Split.concat([Split.load(data / "train.pt"), Split.load(data / "val.pt")]), config)

    parent = mlflow_setup(params)
    with tracking.start_run("cv", run_tags("cv"), parent_run_id=parent) as run:
        mlflow.log_params({"folds": config.folds, "seed": config.seed, "pairs": sum(len(f.heldout) for f in folds)})
        cv_run = run.info.run_id
    tables: dict[str, list[pd.DataFrame]] = {}
    for fold in folds:
        runner = functools.partial(_logged_phase, fold.index, cv_run)
        with work(fold=fold.index):
            checkpoints = train_fold(fold, arch, frozen_config, finetune_config, levels, models_dir, runner)
            for name, table in score_heldout(checkpoints, fold, batch_size, device, tta, postprocess).items():
                tables.setdefault(name, []).append(table)

    summary = {}
    for name, parts in tables.items():
        table = pd.concat(parts).sort_values("id")
        atomic.write_text(per_image_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.6f"))
        summary[name] = summarize_folds(table)
    tuned = [f"finetune_{level_name(level)}" for level in levels]
    best = max(tuned, key=lambda name: summary[name]["orig_jaccard"]["mean"])
    ensemble = {
        "folds": config.folds,
        "model": best,
        "checkpoints": [f"fold{fold.index}/{best}.pt" for fold in folds],
        "mlflow_run_id": cv_run,
    }
    atomic.write_json(models_dir / "ensemble.json", ensemble)
    atomic.write_json(metrics_path, summary)
    with tracking.start_run("cv", {"lesionseg.ensemble_model": best}, run_id=cv_run):
        for name, entry in summary.items():
            for metric in ("orig_jaccard", "orig_dice"):
                tracking.log_flat(f"{name}.cv_{metric}_", {k: entry[metric][k] for k in ("mean", "se")})
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifacts(str(per_image_dir), "per_image")


def _logged_phase(fold: int, cv_run: str, name, model, arch, train, val, config, checkpoint, history):
    from lesionseg.training.phases import train_phase

    tags = {**run_tags(name), "lesionseg.fold": fold}
    return train_phase(f"fold{fold}/{name}", model, arch, train, val, config, checkpoint, history, tags, cv_run)


if __name__ == "__main__":
    main(run)
