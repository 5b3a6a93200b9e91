"""Stage export: the chosen model, with the inference settings it was evaluated with, as
``models/model.pt`` (for ``lesionseg predict``), ONNX, and an MLflow pyfunc model; and its model card
(``<card>.md``, ``<card>.json``, also in the ONNX metadata and logged with the MLflow model), generated from
the pipeline's records: the data manifest, the params, the evaluate and cv_score stages' results.

``export.model`` is a model name (``frozen``, ``finetune_all``, ...), ``best`` (the
fine-tuned model with the best validation Jaccard) or ``cv_ensemble`` (the
cross-validation fold models, averaged; needs ``cv.folds`` > 0). The review threshold stored with
it is the one the evaluate stage chose for that model (``review_threshold`` in ``reports/metrics.json``).
"""

import argparse
import json
import os
from pathlib import Path

from lesionseg import atomic, tracking
from lesionseg.evaluation.records import parse_metrics
from lesionseg.evaluation.runs import read_tables
from lesionseg.evaluation.selection import choose_model, pipeline_checkpoints
from lesionseg.model.checkpoint import first_member, package_model, read_checkpoint
from lesionseg.model.ensemble import ENSEMBLE_NAME
from lesionseg.model.model import parameter_counts_by_level
from lesionseg.model.postprocess import InferenceConfig
from lesionseg.serving.export import export_onnx, log_pyfunc_model
from lesionseg.serving.model_card import card_markdown, card_results, model_card
from stages.external_sets import external_folders
from stages.launch import main, work
from stages.params import ParamError, get, load_params, repo_root
from stages.runlog import mlflow_setup


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
        review_threshold=stored_review_threshold(args.metrics, chosen),
        zoom=get(params, "evaluate.zoom.enabled"),
        zoom_margin=get(params, "evaluate.zoom.margin"),
        zoom_max_share=get(params, "evaluate.zoom.max_share"),
    )
    parent = mlflow_setup(params)
    with work():
        package = package_model(paths, settings)
        card = model_card(
            name=chosen,
            checkpoint=package,
            parameter_counts=parameter_counts_by_level(),
            recipe=recipe_of(package, paths[0].parent / "frozen.pt" if chosen == ENSEMBLE_NAME else args.frozen),
            data=training_data(args.raw, args.prepared, params),
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


def recipe_of(package: dict, frozen: Path) -> dict:
    """What made the model, as its checkpoints record it: the architecture's config, the input size, each
    training phase's config (the frozen phase's from ``frozen``, the frozen checkpoint it was tuned from), the
    precision and layout each phase's training step used, and the inference settings."""
    member = first_member(package)
    frozen_checkpoint = read_checkpoint(frozen)
    phases = {"frozen": frozen_checkpoint.get("train_config")}
    numerics = {"frozen": frozen_checkpoint.get("numerics", {})}
    if member.get("unfreeze") != "0":
        phases[f"finetune_{member['unfreeze']}"] = member.get("train_config")
        numerics[f"finetune_{member['unfreeze']}"] = member.get("numerics", {})
    return {
        "model": member["model_config"],
        "input_size": package["preprocessing"]["size"],
        "phases": phases,
        "numerics": numerics,
        "inference": package.get("inference", {}),
    }


def training_data(raw: Path, prepared: Path, params: dict) -> dict:
    manifest = json.loads((raw / "manifest.json").read_text())
    summary = json.loads((prepared / "summary.json").read_text())
    return {
        "source": manifest.get("source"),
        "archives": {name: entry["sha256"] for name, entry in manifest.get("archives", {}).items()},
        "pairs": summary.get("pairs"),
        "split_seed": get(params, "data.seed"),
        "val_fraction": get(params, "data.val_fraction"),
    }


def exported_tables(per_image: Path, model: str, sets: list[str]) -> dict:
    """Evaluation -> the exported model's per-image table: ``test``, then each external set's."""
    tables = {"test": read_tables(per_image / f"{model}.csv")[model]}
    for name in sets:
        tables[f"external {name}"] = read_tables(per_image / name / f"{model}.csv")[model]
    return tables


def review_by_evaluation(metrics: Path, model: str) -> dict[str, dict]:
    record = parse_metrics(metrics.read_text(), metrics)[model]

    def review(scores: dict) -> dict:
        return {k: v for k, v in scores.items() if k.startswith("review_")}

    return {"test": review(record.test), **{f"external {s}": review(v) for s, v in record.external.items()}}


def cv_summary(cv_metrics: Path, package: dict, model: str) -> dict | None:
    """The CV estimate of the exported model's recipe: the CV summary of its level (of the ensemble's members)."""
    summary = json.loads(cv_metrics.read_text())
    level = first_member(package)["unfreeze"]
    name = model if model in summary else ("frozen" if level == "0" else f"finetune_{level}")
    if name not in summary:
        return None
    entry = summary[name]
    jaccard = entry["orig_jaccard"]
    return {"model": name, "folds": entry["folds"], "n": entry["n"], "mean": jaccard["mean"], "se": jaccard["se"]}


if __name__ == "__main__":
    main(run)
