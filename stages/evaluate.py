"""Stage evaluate: every trained model on the test split -> reports/metrics.json + per-image CSVs.

Each model (and, with ``cv.folds``, the fold models' ensemble ``cv_ensemble``) is scored with the ``evaluate``
settings on the test split, the validation split (``val_`` keys) and every external set; its review threshold
flags ``evaluate.review_fraction`` of its validation masks. An external set named in ``evaluate.calibrate`` is
scored as trained and as calibrated on its held-out images. MLflow: each model's scores on its run, the metrics
file and tables on the parent. Details: docs/metrics.md, docs/other-clinics.md, docs/mlflow.md.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import mlflow

from lesionseg import atomic, tracking
from lesionseg.data.cache import Split
from lesionseg.evaluation.calibrate import CalibrationDraw, score_calibrated_sets
from lesionseg.evaluation.cv_ensemble import evaluate_cv_ensemble
from lesionseg.evaluation.evaluate import CALIBRATED_SUFFIX, TEST_TABLE, evaluate_checkpoint
from lesionseg.evaluation.selection import pipeline_checkpoints
from lesionseg.experiments.model_metrics import ModelMetrics, metrics_json
from lesionseg.model.checkpoint import load_model
from lesionseg.model.ensemble import ENSEMBLE_NAME
from lesionseg.runtime import select_device
from stages.external_sets import load_external_sets
from stages.launch import main, timed_work
from stages.params import ParamError, load_params, section
from stages.runlog import mlflow_setup, run_tags
from stages.settings import inference_settings

HEADLINE = ("orig_jaccard", "orig_dice")  # also logged on the parent run, to compare executions


def write_tables(per_image_dir: Path, model: str, tables: dict) -> None:
    """``<model>.csv`` for the test split; ``<set>/<model>.csv`` for each external set."""
    for split_name, table in tables.items():
        path = per_image_dir / (f"{model}.csv" if split_name == TEST_TABLE else f"{split_name}/{model}.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, table.to_csv(index=False, float_format="%.6f"))


def calibration_draws(params: dict, external: dict) -> dict[str, CalibrationDraw]:
    """``evaluate.calibrate`` (set -> image count) and ``evaluate.calibrate_seed`` checked against the prepared
    ``external`` sets: set -> its draw."""
    evaluate = section(params, "evaluate")
    value, seed = evaluate.calibrate or {}, evaluate.calibrate_seed
    if not isinstance(value, dict):
        raise ParamError("params.yaml: evaluate.calibrate must map an external set's name to an image count")
    draws = {}
    for name, images in value.items():
        key = f"params.yaml: evaluate.calibrate.{name}"
        if name not in external:
            raise ParamError(f"{key}: no such set in evaluate.external")
        if name + CALIBRATED_SUFFIX in external:
            raise ParamError(f"{key}: its calibrated scores would be named like the set {name + CALIBRATED_SUFFIX}")
        if type(images) is not int or not 0 < images < len(external[name]):
            raise ParamError(f"{key} must be an image count below the set's {len(external[name])}, got {images!r}")
        try:
            draws[name] = CalibrationDraw(images, seed)
        except ValueError as exc:
            raise ParamError(f"{key}: {exc}") from exc
    return draws


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--cv-models", type=Path, required=True, help="the cv_train stage's fold checkpoints")
    parser.add_argument("--cv-ensemble", type=Path, required=True, help="the cv_score stage's ensemble.json")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True)
    parser.add_argument(
        "--external", type=Path, required=True, help="folder of the external@<set> stages' outputs (<set>.pt)"
    )
    args = parser.parse_args()
    params = load_params()
    evaluate = section(params, "evaluate")
    batch_size, review_fraction = evaluate.batch_size, evaluate.review_fraction
    settings = inference_settings(params)  # the evaluation settings, from which calibration starts
    device = select_device(section(params, "runtime").device)
    test, val = Split.load(args.data / "test.pt"), Split.load(args.data / "val.pt")
    ensemble = json.loads(args.cv_ensemble.read_text())
    external = load_external_sets(params, args.external)
    draws = calibration_draws(params, external)
    as_trained = {name: split for name, split in external.items() if name not in draws}  # scored whole
    parent = mlflow_setup(params)

    all_metrics, trained_in = {}, {}
    with atomic.atomic_dir(args.per_image) as per_image_dir:
        with timed_work():  # scoring; the MLflow logging below is not the stage's work
            for name, path in pipeline_checkpoints(args.frozen, args.finetuned).items():
                metrics, tables, checkpoint = evaluate_checkpoint(
                    path,
                    test,
                    settings,
                    batch_size,
                    device,
                    val_split=val,
                    external=as_trained,
                    review_fraction=review_fraction,
                )
                if draws:
                    model = load_model(path)[0].to(device)
                    own = replace(settings, review_threshold=metrics.get("review_threshold"))
                    score_calibrated_sets(model, metrics, tables, external, draws, own, batch_size, device)
                all_metrics[name] = ModelMetrics.from_json(metrics, name)
                trained_in[name] = checkpoint["extra"].get("mlflow_run_id")
                write_tables(per_image_dir, name, tables)
            if ensemble["checkpoints"]:
                metrics, tables, model = evaluate_cv_ensemble(
                    ensemble, args.cv_models, test, as_trained, settings, batch_size, device
                )
                own = replace(settings, review_threshold=ensemble.get("review_threshold"))
                score_calibrated_sets(model, metrics, tables, external, draws, own, batch_size, device)
                all_metrics[ENSEMBLE_NAME] = ModelMetrics.from_json(metrics, ENSEMBLE_NAME)
                trained_in[ENSEMBLE_NAME] = ensemble.get("mlflow_run_id")
                write_tables(per_image_dir, ENSEMBLE_NAME, tables)
        atomic.write_json(args.metrics, metrics_json(all_metrics))

        for name, record in all_metrics.items():
            with tracking.model_run(name, trained_in[name], parent, run_tags(name)):
                tracking.log_flat("test_", record.test)
                tracking.log_flat("evaluate_val_", record.val)
                for set_name, set_scores in record.external.items():
                    tracking.log_flat(f"{set_name}_", set_scores)
        with tracking.start_run("", {}, run_id=parent):
            mlflow.log_params({"evaluate.test_images": len(test), "evaluate.val_images": len(val)})
            mlflow.log_params({f"evaluate.{set_name}_images": len(split) for set_name, split in external.items()})
            mlflow.log_params({f"evaluate.{name}_calibration_images": draw.images for name, draw in draws.items()})
            mlflow.log_params({"evaluate.calibrate_seed": evaluate.calibrate_seed} if draws else {})
            for name, record in all_metrics.items():
                tracking.log_flat(f"{name}.test_", {k: record.test[k] for k in HEADLINE})
                for set_name, set_scores in record.external.items():
                    tracking.log_flat(f"{name}.{set_name}_", {k: set_scores[k] for k in HEADLINE})
            mlflow.log_artifact(str(args.metrics))
            mlflow.log_artifacts(str(per_image_dir), "per_image")


if __name__ == "__main__":
    main(run)
