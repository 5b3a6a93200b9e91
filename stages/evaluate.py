"""Stage evaluate: every trained model on the test split -> reports/metrics.json + per-image CSVs.

Each model's metrics also hold its validation-split scores (``val_`` prefix,
same definitions, TTA and post-processing): the split to choose a recipe on.
With cross-validation on (``cv.folds``), the fold models' ensemble is scored
too, as the row ``cv_ensemble`` (test only: its members were trained on the
validation pairs).

MLflow: each model's test scores go to its run under this execution's parent
run as ``test_<metric>`` (validation-split scores as ``evaluate_val_<metric>``);
the metrics file and per-image tables go to the parent run.
"""

import argparse
import json
from pathlib import Path

import mlflow

from lesionseg import atomic, tracking
from lesionseg.data.cache import Split
from lesionseg.evaluation.evaluate import VALIDATION_PREFIX, evaluate_checkpoint, evaluate_model
from lesionseg.evaluation.postprocess import PostprocessConfig
from lesionseg.evaluation.selection import pipeline_checkpoints
from lesionseg.model.checkpoint import load_models
from lesionseg.model.ensemble import ENSEMBLE_NAME
from lesionseg.model.inference import select_device
from lesionseg.model.model import count_parameters
from stages.common import build, get, load_params, main, mlflow_setup, run_tags, work

HEADLINE = ("orig_jaccard", "orig_dice")  # also logged on the parent run, to compare executions
MODEL_INFO = ("lr", "epochs", "best_epoch", "members")  # in metrics.json for the report; not scores


def scores(metrics: dict, prefix: str = "") -> dict:
    """The scores among a model's metrics.json entry: keys starting with ``prefix``, prefix removed."""
    return {
        k[len(prefix) :]: v
        for k, v in metrics.items()
        if k.startswith(prefix) and not k.startswith("params_") and k not in MODEL_INFO
    }


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--cv-models", type=Path, required=True, help="output folder of the cv stage")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    batch_size, tta = get(params, "evaluate.batch_size"), get(params, "evaluate.tta")
    postprocess = build(PostprocessConfig, params, "evaluate")
    device = select_device(get(params, "runtime.device"))
    test, val = Split.load(args.data / "test.pt"), Split.load(args.data / "val.pt")
    ensemble = json.loads((args.cv_models / "ensemble.json").read_text())
    parent = mlflow_setup(params)

    all_metrics, trained_in = {}, {}
    with atomic.atomic_dir(args.per_image) as per_image_dir:
        with work():  # scoring; the MLflow logging below is not the stage's work
            for name, path in pipeline_checkpoints(args.frozen, args.finetuned).items():
                metrics, table, checkpoint = evaluate_checkpoint(
                    path, test, batch_size, device, tta, postprocess, val_split=val
                )
                all_metrics[name], trained_in[name] = metrics, checkpoint["extra"].get("mlflow_run_id")
                atomic.write_text(per_image_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.6f"))
            if ensemble["checkpoints"]:
                model, _ = load_models([args.cv_models / p for p in ensemble["checkpoints"]])
                model.to(device)
                metrics, table = evaluate_model(model, test, batch_size, device, tta, postprocess)
                metrics.update({f"params_{k}": v for k, v in count_parameters(model).items()})
                metrics.update({"members": len(ensemble["checkpoints"]), "member_model": ensemble["model"]})
                all_metrics[ENSEMBLE_NAME], trained_in[ENSEMBLE_NAME] = metrics, ensemble.get("mlflow_run_id")
                atomic.write_text(
                    per_image_dir / f"{ENSEMBLE_NAME}.csv", table.to_csv(index=False, float_format="%.6f")
                )
        atomic.write_json(args.metrics, all_metrics)

        for name, metrics in all_metrics.items():
            test_scores = {k: v for k, v in scores(metrics).items() if not k.startswith(VALIDATION_PREFIX)}
            with tracking.model_run(name, trained_in[name], parent, run_tags(name)):
                tracking.log_flat("test_", test_scores)
                tracking.log_flat("evaluate_val_", scores(metrics, VALIDATION_PREFIX))
        with tracking.start_run("", {}, run_id=parent):
            mlflow.log_params({"evaluate.test_images": len(test), "evaluate.val_images": len(val)})
            for name, metrics in all_metrics.items():
                tracking.log_flat(f"{name}.test_", {k: metrics[k] for k in HEADLINE})
            mlflow.log_artifact(str(args.metrics))
            mlflow.log_artifacts(str(per_image_dir), "per_image")


if __name__ == "__main__":
    main(run)
