"""Stage cv_score: every fold model of the ``cv_train@<k>`` stages scored on its held-out pairs and on each
external set, with the ``evaluate`` settings (so an inference-only change re-runs this stage, not the training).

Writes the out-of-fold per-image tables, the fold-model means on each external set, the CV summary (DVC
metrics, with each model's review threshold and metrics) and ``<ensemble>``, the fold models the evaluate and
export stages use as ``cv_ensemble``; with folds off, the same outputs, empty. MLflow: the summary on the
execution's ``cv`` run. Details: docs/cross-validation.md.
"""

import argparse
import contextlib
import json
from pathlib import Path

from lesionseg import atomic
from stages.external_sets import load_external_sets
from stages.launch import main, timed_work
from stages.params import load_params, section


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="folds.json and the fold<k>/ folders")
    parser.add_argument("--external", type=Path, required=True, help="folder of the external@<set> stages' outputs")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True, help="out-of-fold per-image tables")
    parser.add_argument("--external-per-image", type=Path, required=True, help="external sets' fold-model means")
    parser.add_argument("--ensemble", type=Path, required=True, help="the cv_ensemble's members (JSON)")
    args = parser.parse_args()
    params = load_params()
    manifest = json.loads((args.models / "folds.json").read_text())
    trained_in = trained_folds(args.models, manifest)
    with contextlib.ExitStack() as stack:
        per_image_dir = stack.enter_context(atomic.atomic_dir(args.per_image))
        external_dir = stack.enter_context(atomic.atomic_dir(args.external_per_image))
        # Written either way, so no output folder is ever empty (DVC warns about empty outputs).
        atomic.write_json(per_image_dir / "folds.json", {"folds": manifest["folds"], "seed": manifest.get("seed")})
        atomic.write_json(external_dir / "sets.json", {"sets": list(load_external_sets(params, args.external))})
        if not manifest["folds"]:
            atomic.write_json(args.ensemble, {"folds": 0, "model": None, "checkpoints": []})
            atomic.write_json(args.metrics, {})
            return
        score_and_write(params, manifest, trained_in, args, per_image_dir, external_dir)


def trained_folds(models: Path, manifest: dict) -> dict[int, str | None]:
    """Fold -> the MLflow ``cv`` run it was trained under, from each fold's ``fold.json``; a fold of the manifest
    that its stage has not trained raises ``ValueError`` naming the file."""
    trained_in = {}
    for entry in manifest["assignment"]:
        path = models / f"fold{entry['fold']}" / "fold.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if not record.get("models"):
            raise ValueError(f"{path}: fold {entry['fold']} has not been trained (run its cv_train stage)")
        trained_in[entry["fold"]] = record.get("mlflow_run_id")
    return trained_in


def score_and_write(params: dict, manifest: dict, trained_in: dict, args, per_image_dir: Path, external_dir: Path):
    """Every fold model scored (:mod:`lesionseg.evaluation.crossval_results`), the results written and logged."""
    import mlflow

    from lesionseg import tracking
    from lesionseg.data.cache import Split
    from lesionseg.evaluation.crossval_results import crossval_results, score_folds
    from lesionseg.runtime import select_device
    from lesionseg.training.folds import folds_from_manifest
    from stages.runlog import mlflow_setup, run_tags
    from stages.settings import inference_settings

    parent = mlflow_setup(params)
    cv_run = tracking.child_run(parent, "cv", run_tags("cv"))

    settings, evaluate = inference_settings(params), section(params, "evaluate")
    device = select_device(section(params, "runtime").device)
    pairs = Split.concat([Split.load(args.data / "train.pt"), Split.load(args.data / "val.pt")])
    folds = folds_from_manifest(pairs, manifest)
    sets = load_external_sets(params, args.external)

    with timed_work(folds=len(folds)):
        fold_scores = score_folds(folds, args.models, sets, settings, evaluate.batch_size, device)
    results = crossval_results(fold_scores, evaluate.review_fraction)
    for name, table in results.out_of_fold.items():
        atomic.write_text(per_image_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.6f"))
    for set_name, models in results.external.items():
        (external_dir / set_name).mkdir()
        for name, table in models.items():
            atomic.write_text(external_dir / set_name / f"{name}.csv", table.to_csv(index=False, float_format="%.6f"))
    summary, best = results.summary, results.ensemble["model"]
    atomic.write_json(args.ensemble, {**results.ensemble, "mlflow_run_id": cv_run})
    atomic.write_json(args.metrics, summary)

    with tracking.model_run("cv", cv_run, parent, run_tags("cv")):
        mlflow.log_params({"folds": len(folds), "seed": manifest["seed"], "pairs": len(pairs)})
        mlflow.set_tag("lesionseg.ensemble_model", best)
        for index, run_id in trained_in.items():
            if run_id != cv_run:
                mlflow.set_tag(f"lesionseg.fold{index}.trained_in_run", str(run_id))
        for name, entry in summary.items():
            for metric in ("orig_jaccard", "orig_dice"):
                tracking.log_flat(f"{name}.cv_{metric}_", {k: entry[metric][k] for k in ("mean", "se")})
            for set_name, scores in entry.get("external", {}).items():
                tracking.log_flat(f"{name}.cv_{set_name}_", {k: scores[k] for k in ("orig_jaccard", "orig_dice")})
        mlflow.log_artifact(str(args.metrics))
        mlflow.log_artifacts(str(per_image_dir), "per_image")


if __name__ == "__main__":
    main(run)
