"""Stage cv_train@<k>: the training of fold ``k`` of k-fold cross-validation (one DVC stage per fold).

Trains the pipeline's phases (frozen, then every ``finetune.unfreeze`` level) on the other folds' pairs of
``<models>/folds.json`` and writes ``<models>/fold<k>/`` (checkpoints, histories, ``fold.json``); a stage whose
``k`` is not below ``cv.folds`` writes ``fold.json`` alone, without importing torch. MLflow: one run per phase
(``fold<k>/<model>``) under the execution's ``cv`` run. Why one stage per fold: docs/cross-validation.md.
"""

import argparse
import json
from pathlib import Path

from lesionseg import atomic
from stages import runlog
from stages.launch import main, timed_work
from stages.params import load_params, section


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="the cv folder: folds.json in, fold<k>/ out")
    parser.add_argument("--fold", type=int, required=True)
    args = parser.parse_args()
    params = load_params()
    manifest = json.loads((args.models / "folds.json").read_text())
    results = []
    with atomic.atomic_dir(args.models / f"fold{args.fold}") as fold_dir:
        if args.fold < manifest["folds"]:
            results = train(params, manifest, args, fold_dir)
        else:  # a fold stage beyond cv.folds: nothing to train
            atomic.write_json(fold_dir / "fold.json", {"fold": args.fold, "folds": manifest["folds"], "models": []})
    runlog.raise_logging_errors(results)  # after the fold's outputs are in place


def train(params: dict, manifest: dict, args, fold_dir: Path) -> list:
    """Train fold ``args.fold`` into ``fold_dir``; returns the phases' results."""
    from lesionseg import tracking
    from lesionseg.data.cache import Split
    from lesionseg.training.crossval import train_fold
    from lesionseg.training.folds import folds_from_manifest
    from stages.configs import model_config, train_config, unfreeze_levels

    arch = model_config(params)
    frozen_config, finetune_config = train_config(params, "train"), train_config(params, "finetune")
    levels = unfreeze_levels(section(params, "finetune").unfreeze)
    inputs = [args.data / "train.pt", args.data / "val.pt", args.models / "folds.json"]
    pairs = Split.concat([Split.load(inputs[0]), Split.load(inputs[1])])
    fold = next(f for f in folds_from_manifest(pairs, manifest) if f.index == args.fold)

    parent = runlog.mlflow_setup(params)
    cv_run = tracking.child_run(parent, "cv", runlog.run_tags("cv"))
    tracking.end_killed_runs(cv_run, f"fold{fold.index}/")
    deferred = runlog.deferred(params, inputs, "stages.cv_train")
    results = []

    def runner(name, job):
        from lesionseg.training.phases import train_phase

        tags = {**runlog.run_tags(name), "lesionseg.fold": fold.index}
        result = train_phase(f"fold{fold.index}/{name}", job, tags, cv_run, deferred=deferred)
        results.append(result)
        return result

    with timed_work(fold=fold.index):
        checkpoints = train_fold(fold, arch, frozen_config, finetune_config, levels, fold_dir, runner)
    record = {"fold": fold.index, "folds": manifest["folds"], "models": list(checkpoints), "mlflow_run_id": cv_run}
    atomic.write_json(fold_dir / "fold.json", record)
    return results


if __name__ == "__main__":
    main(run)
