"""Stage export: the chosen model, with the inference settings it was evaluated with, as
``models/model.pt`` (for ``lesionseg predict``), ONNX, and an MLflow pyfunc model.

``export.model`` is a model name (``frozen``, ``finetune_all``, ...), ``best`` (the
fine-tuned model with the best validation Jaccard) or ``cv_ensemble`` (the
cross-validation fold models, averaged; needs ``cv.folds`` > 0). The review threshold stored with
it is the one the evaluate stage chose for that model (``review_threshold`` in ``reports/metrics.json``).
"""

import argparse
import json
from pathlib import Path

from lesionseg import atomic, tracking
from lesionseg.evaluation.postprocess import InferenceConfig
from lesionseg.evaluation.records import parse_metrics
from lesionseg.evaluation.selection import choose_model, pipeline_checkpoints
from lesionseg.model.checkpoint import package_model
from lesionseg.model.ensemble import ENSEMBLE_NAME
from lesionseg.serving.export import export_onnx, log_pyfunc_model
from stages.launch import main, work
from stages.params import ParamError, get, load_params
from stages.runlog import mlflow_setup


def review_threshold(metrics: Path, model: str) -> float | None:
    """The review threshold the evaluate stage chose for ``model``; None (with a note) if it has none."""
    record = parse_metrics(metrics.read_text(), metrics).get(model)
    if record is None or record.review_threshold is None:
        print(f"note: {metrics} has no review threshold for {model}; the exported model flags no mask for review")
        return None
    return record.review_threshold


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--cv-models", type=Path, required=True, help="the cv_train stage's fold checkpoints")
    parser.add_argument("--cv-ensemble", type=Path, required=True, help="the cv_score stage's ensemble.json")
    parser.add_argument("--model", type=Path, required=True, help="exported model file (models/model.pt)")
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="the evaluate stage's metrics (review threshold)")
    args = parser.parse_args()
    params = load_params()
    which = get(params, "export.model")
    if which == ENSEMBLE_NAME:
        ensemble = json.loads(args.cv_ensemble.read_text())
        if not ensemble["checkpoints"]:
            raise ParamError("params.yaml: export.model is cv_ensemble but cross-validation is off (cv.folds: 0)")
        chosen, paths = ENSEMBLE_NAME, [args.cv_models / p for p in ensemble["checkpoints"]]
    else:
        checkpoints = pipeline_checkpoints(args.frozen, args.finetuned)
        chosen = choose_model(checkpoints, which)
        paths = [checkpoints[chosen]]
    settings = InferenceConfig(
        tta=get(params, "evaluate.tta"),
        keep_largest=get(params, "evaluate.keep_largest"),
        fill_holes=get(params, "evaluate.fill_holes"),
        review_threshold=review_threshold(args.metrics, chosen),
    )
    with work():
        atomic.torch_save(package_model(paths, settings), args.model)
        export_onnx(args.model, args.onnx)

    parent = mlflow_setup(params)
    with tracking.start_run("", {"lesionseg.exported_model": chosen}, run_id=parent):  # the execution's model
        uri = log_pyfunc_model(args.model)
    print(f"exported {chosen} to {args.model} and {args.onnx}; MLflow model {uri}")


if __name__ == "__main__":
    main(run)
