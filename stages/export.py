"""Stage export: the chosen model, with the inference settings it was evaluated with, as ``models/model.pt`` (for
``lesionseg predict``), ONNX and an MLflow pyfunc model; and its model card (``<card>.md``, ``<card>.json``),
generated from the pipeline's records.

``export.model`` is a model name (``frozen``, ``finetune_all``, ...), ``best`` (the fine-tuned model with the best
validation Jaccard) or ``cv_ensemble`` (the fold models, averaged; needs ``cv.folds`` > 0). The stored review
threshold is the one the evaluate stage chose for that model.
"""

import argparse
import json
import os
from pathlib import Path

from lesionseg import atomic, tracking
from lesionseg.evaluation.selection import choose_model, pipeline_checkpoints
from lesionseg.experiments.model_metrics import parse_metrics
from lesionseg.inference.exported import package_model
from lesionseg.model.ensemble import ENSEMBLE_NAME
from lesionseg.model.model import parameter_counts_by_level
from lesionseg.serving.card_facts import cv_summary, exported_tables, recipe_of, review_by_evaluation, training_data
from lesionseg.serving.export import export_onnx, log_pyfunc_model
from lesionseg.serving.model_card import card_markdown, card_results, model_card
from stages.external_sets import external_folders
from stages.launch import main, timed_work
from stages.params import ParamError, load_params, repo_root, section
from stages.runlog import mlflow_setup
from stages.settings import inference_settings


def stored_review_threshold(metrics: Path, model: str) -> float | None:
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
    parser.add_argument("--per-image", type=Path, required=True, help="the evaluate stage's per-image tables")
    parser.add_argument("--cv-metrics", type=Path, required=True, help="the cv_score stage's metrics")
    parser.add_argument("--raw", type=Path, required=True, help="the download stage's folder (manifest.json)")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's folder (summary.json)")
    parser.add_argument("--card", type=Path, required=True, help="model card stem: <card>.md and <card>.json")
    args = parser.parse_args()
    params = load_params()
    which, data = section(params, "export").model, section(params, "data")
    if which == ENSEMBLE_NAME:
        ensemble = json.loads(args.cv_ensemble.read_text())
        if not ensemble["checkpoints"]:
            raise ParamError("params.yaml: export.model is cv_ensemble but cross-validation is off (cv.folds: 0)")
        chosen, paths = ENSEMBLE_NAME, [args.cv_models / p for p in ensemble["checkpoints"]]
    else:
        checkpoints = pipeline_checkpoints(args.frozen, args.finetuned)
        chosen = choose_model(checkpoints, which)
        paths = [checkpoints[chosen]]
    settings = inference_settings(params, review_threshold=stored_review_threshold(args.metrics, chosen))
    parent = mlflow_setup(params)
    with timed_work():
        package = package_model(paths, settings)
        card = model_card(
            name=chosen,
            checkpoint=package,
            parameter_counts=parameter_counts_by_level(),
            recipe=recipe_of(package, paths[0].parent / "frozen.pt" if chosen == ENSEMBLE_NAME else args.frozen),
            data=training_data(args.raw, args.prepared, data.seed, data.val_fraction),
            results=card_results(
                exported_tables(args.per_image, chosen, list(external_folders(params))),
                settings.review_threshold,
                review_by_evaluation(args.metrics, chosen),
                cv_summary(args.cv_metrics, package, chosen),
            ),
            provenance={
                "git_commit": tracking.git_commit(repo_root()),
                "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
                "mlflow_run_id": parent,
            },
        )
        atomic.torch_save(package, args.model)
        export_onnx(args.model, args.onnx, {"lesionseg.model_card": json.dumps(card)})
        atomic.write_json(args.card.with_suffix(".json"), card)
        atomic.write_text(args.card.with_suffix(".md"), card_markdown(card))

    with tracking.start_run("", {"lesionseg.exported_model": chosen}, run_id=parent):  # the execution's model
        uri = log_pyfunc_model(args.model, [args.card.with_suffix(".md"), args.card.with_suffix(".json")])
    print(f"exported {chosen} to {args.model} and {args.onnx}, its card to {args.card}.md; MLflow model {uri}")


if __name__ == "__main__":
    main(run)
