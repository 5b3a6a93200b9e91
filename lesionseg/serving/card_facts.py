"""The model card's facts, read from the pipeline's records (:mod:`lesionseg.serving.model_card` renders them).

Each function reads one kind of record: the exported checkpoints (:func:`recipe_of`), the download and
prepare stages' summaries (:func:`training_data`), the evaluate stage's per-image tables
(:func:`exported_tables`) and metrics (:func:`review_by_evaluation`), and the ``cv_score`` stage's metrics
(:func:`cv_summary`). The export stage passes them the files; nothing here reads params.
"""

from __future__ import annotations

import json
from pathlib import Path

from lesionseg.experiments.model_metrics import parse_metrics
from lesionseg.experiments.runs import read_tables
from lesionseg.model.checkpoint import first_member, read_checkpoint


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


def training_data(raw: Path, prepared: Path, split_seed: int, val_fraction: float) -> dict:
    """The data the model was trained on: the source and each archive's sha256 (the download stage's
    ``manifest.json`` in ``raw``), the pair counts (the prepare stage's ``summary.json`` in ``prepared``) and
    the validation split (``split_seed``, ``val_fraction``: the ``data`` params)."""
    manifest = json.loads((Path(raw) / "manifest.json").read_text())
    summary = json.loads((Path(prepared) / "summary.json").read_text())
    return {
        "source": manifest.get("source"),
        "archives": {name: entry["sha256"] for name, entry in manifest.get("archives", {}).items()},
        "pairs": summary.get("pairs"),
        "split_seed": split_seed,
        "val_fraction": val_fraction,
    }


def exported_tables(per_image: Path, model: str, sets: list[str]) -> dict:
    """Evaluation -> the exported model's per-image table: ``test``, then each external set's."""
    per_image = Path(per_image)
    tables = {"test": read_tables(per_image / f"{model}.csv")[model]}
    for name in sets:
        tables[f"external {name}"] = read_tables(per_image / name / f"{model}.csv")[model]
    return tables


def review_by_evaluation(metrics: Path, model: str) -> dict[str, dict]:
    """Evaluation (``test``, ``external <set>``) -> ``model``'s ``review_*`` metrics in the evaluate stage's
    ``metrics``."""
    record = parse_metrics(Path(metrics).read_text(), metrics)[model]

    def review(scores: dict) -> dict:
        return {k: v for k, v in scores.items() if k.startswith("review_")}

    return {"test": review(record.test), **{f"external {s}": review(v) for s, v in record.external.items()}}


def cv_summary(cv_metrics: Path, package: dict, model: str) -> dict | None:
    """The CV estimate of the exported model's recipe: the CV summary of its level (of the ensemble's members)
    in the ``cv_score`` stage's ``cv_metrics``; None when cross-validation did not train that level."""
    summary = json.loads(Path(cv_metrics).read_text())
    level = first_member(package)["unfreeze"]
    name = model if model in summary else ("frozen" if level == "0" else f"finetune_{level}")
    if name not in summary:
        return None
    entry = summary[name]
    jaccard = entry["orig_jaccard"]
    return {"model": name, "folds": entry["folds"], "n": entry["n"], "mean": jaccard["mean"], "se": jaccard["se"]}
