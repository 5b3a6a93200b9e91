"""The model card of an exported model: generated from what the pipeline recorded and measured, never by hand.

:func:`model_card` gathers the facts into one JSON-ready dict; :func:`card_markdown` renders it for people.
Its ``network_data_format`` section follows MONAI bundle metadata (``inputs``/``outputs`` with type, format,
channels, spatial shape, dtype and value range), so tools that read bundles can read the model's interface.
The export stage writes both beside the ONNX model, logs them to MLflow with the model and puts the JSON in
the ONNX metadata (``lesionseg.model_card``).
"""

from __future__ import annotations

import json
from pathlib import Path

from lesionseg.errors import DataError

_INTENDED_USE = (
    "Research use: segmenting the lesion in dermoscopic images of single skin lesions (the ISIC challenge "
    "setting), to reproduce and compare segmentation recipes."
)
_LIMITATIONS = (
    "Not a diagnostic device and not validated for clinical use.",
    "Trained on dermoscopic images of one public collection (ISIC 2016 Part 1); clinical photographs, other "
    "devices and other populations are outside what it was trained and tested on.",
    "Scores drop on other collections (see the external sets below); small lesions are segmented worst.",
    "Every image is assumed to show one lesion: the mask clean-up keeps the largest component.",
)


def network_data_format(size: int, mean: list[float], std: list[float]) -> dict:
    """MONAI bundle metadata's ``network_data_format`` for the exported network (the ONNX graph)."""
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "dermoscopy (RGB)",
                "num_channels": 3,
                "spatial_shape": [size, size],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": False,
                "channel_def": {"0": "R", "1": "G", "2": "B"},
                "preprocessing": f"resize to {size}x{size}, scale to [0, 1], normalise with mean {mean}, std {std}",
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "logits",
                "num_channels": 1,
                "spatial_shape": [size, size],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {"0": "lesion"},
                "postprocessing": "sigmoid, threshold, optional flip TTA and clean-up (inference settings); "
                "upsample to the image's size",
            }
        },
    }


def model_card(
    *,
    name: str,
    checkpoint: dict,
    parameter_counts: dict[str, dict[str, int]],
    recipe: dict,
    data: dict,
    results: dict,
    provenance: dict,
) -> dict:
    """The card of exported model ``name`` (``checkpoint``: :func:`lesionseg.inference.exported.package_model`'s
    dict). ``parameter_counts``: unfreeze level -> counts; ``recipe``: what made it (configs by phase);
    ``data``: archives with their sha256, pair counts, split seed; ``results``: evaluation -> ``n``, ``iou``
    with ``ci95``, ``dice`` (and ``drop`` for external sets), plus ``cv`` and ``review``; ``provenance``:
    git commit, DVC experiment, MLflow run. ``model.training_numerics``: the precision and memory layout the
    members' training step used (each distinct record once; see :class:`lesionseg.runtime.Numerics`)."""
    preprocessing = checkpoint["preprocessing"]
    members = checkpoint.get("members", [checkpoint])
    numerics = []  # the members' training step precisions and layouts, each once (an ensemble's usually agree)
    for member in members:
        if member.get("numerics", {}) not in numerics:
            numerics.append(member.get("numerics", {}))
    card = {
        "name": f"lesionseg {name}",
        "model": {
            "architecture": "U-Net decoder on a torchvision MobileNetV2 encoder (ImageNet weights), four encoder "
            "stages (features[0:4], [4:7], [7:14], [14:19])",
            "members": len(members),
            "unfreeze_level": members[0].get("unfreeze"),
            "colour_constancy": members[0]["model_config"].get("colour_constancy", "none"),
            "parameter_counts": parameter_counts,
            "training_numerics": numerics,
            "inference": checkpoint.get("inference", {}),
        },
        "network_data_format": network_data_format(preprocessing["size"], preprocessing["mean"], preprocessing["std"]),
        "training_data": data,
        "recipe": recipe,
        "results": results,
        "intended_use": _INTENDED_USE,
        "limitations": list(_LIMITATIONS),
        "provenance": provenance,
        "lesionseg_version": checkpoint.get("lesionseg_version"),
    }
    if "calibration" in checkpoint:
        card["calibration"] = checkpoint["calibration"]
    return card


def read_card(path: Path) -> dict:
    """A model card JSON (the export stage's ``models/model_card.json``); :class:`DataError` naming the file
    when it is missing or not a card."""
    path = Path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable model card ({type(exc).__name__}: {exc})") from exc
    if not isinstance(card, dict) or not isinstance(card.get("model"), dict):
        raise DataError(path, "not a lesionseg model card (no model section)")
    return card


def calibrated_card(card: dict, package: dict) -> dict:
    """The card of ``package``, a model ``lesionseg calibrate`` made from the one ``card`` describes: the same
    card with ``package``'s inference settings and its ``calibration`` record (its results stay those of the
    settings before calibration, and the page says so)."""
    return {
        **card,
        "model": {**card["model"], "inference": package["inference"]},
        "calibration": package["calibration"],
    }


def _gain(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['delta']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _review(settings: dict) -> str:
    threshold = settings.get("review_threshold")
    return "none" if threshold is None else f"{threshold:.4g}"


def _calibration_markdown(calibration: dict) -> list[str]:
    """The card's calibration section (``lesionseg calibrate``'s record)."""
    before, after = calibration["before"], calibration["after"]
    low, high, count = calibration["searched"]["threshold"]
    folder = calibration["images"] + (f" (masks {calibration['masks']})" if calibration.get("masks") else "")
    if calibration["adopted"]:
        verdict = (
            f"The held-out gain's interval lies above 0: the model stores threshold {after['threshold']:g} "
            f"(was {before['threshold']:g}) and review threshold {_review(after)} (was {_review(before)}). The "
            "results below were measured with the settings before calibration."
        )
    else:
        verdict = "The held-out gain's interval does not lie above 0: the stored settings were kept."
    return [
        "## Calibration",
        "",
        f"Calibrated by `lesionseg calibrate` on {calibration['n']} labelled images of `{folder}`: "
        f"{', '.join(calibration['ids'])}.",
        "",
        f"Thresholds searched: {count} from {low:g} to {high:g}. Mean per-image IoU on these images "
        f"{calibration['iou_before']:.4f} at the stored threshold {before['threshold']:g}, "
        f"{calibration['iou_best']:.4f} at the best, {calibration['best_threshold']:g}: in-sample gain "
        f"{_gain(calibration['in_sample_gain'])}; held out (each image at the threshold chosen on the others) "
        f"{_gain(calibration['held_out_gain'])} (paired 95% bootstrap intervals).",
        "",
        verdict,
        "",
    ]


def _numerics_line(numerics: dict) -> str:
    if not numerics:
        return "Training step precision and layout: not recorded (a checkpoint from before lesionseg recorded them)."
    layout = "channels-last (NHWC)" if numerics["channels_last"] else "contiguous (NCHW)"
    asked = f"runtime.amp {numerics['amp_request']}, runtime.channels_last {numerics['channels_last_request']}"
    precision = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}.get(
        numerics["precision"], numerics["precision"]
    )
    tf32 = {True: "; fp32 convolutions and matrix products on CUDA in TF32 (runtime.tf32 true)",
            False: "; fp32 convolutions and matrix products in full fp32, no TF32 (runtime.tf32 false)"}  # fmt: skip
    return f"Training step: {precision}, {layout} memory layout (asked: {asked}){tf32.get(numerics.get('tf32'), '')}."


def _interval(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:.4f} [{low:.4f}, {high:.4f}]"


def card_markdown(card: dict) -> str:
    """The card as a Markdown page."""
    model, data, results = card["model"], card["training_data"], card["results"]
    counts = model["parameter_counts"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        "Generated by the export stage from the pipeline's records; do not edit.",
        "",
        "## Model",
        "",
        f"{model['architecture']}; {model['members']} member(s) (more than one: the mean probability of an "
        f"ensemble), trained up to unfreeze level {model['unfreeze_level']}; colour constancy: "
        f"{model['colour_constancy']}.",
        "",
        "| unfreeze level | total | trainable | frozen |",
        "|---|--:|--:|--:|",
        *(f"| {lvl} | {c['total']:,} | {c['trainable']:,} | {c['frozen']:,} |" for lvl, c in counts.items()),
        "",
        *(_numerics_line(n) for n in model["training_numerics"]),
        "",
        f"Inference settings stored with the model: `{json.dumps(model['inference'])}`; inference runs in fp32 "
        "on the CPU whatever the training used.",
        "",
        "Input and output (MONAI `network_data_format`):",
        "",
        "```json",
        json.dumps(card["network_data_format"], indent=2),
        "```",
        "",
        "## Training data",
        "",
        f"Source: `{data.get('source')}`; pairs: {json.dumps(data.get('pairs'))}; validation split seed "
        f"{data.get('split_seed')} (fraction {data.get('val_fraction')}).",
        "",
        "| archive | sha256 |",
        "|---|---|",
        *(f"| {archive} | `{sha}` |" for archive, sha in data.get("archives", {}).items()),
        "",
        "## Results",
        "",
        "Per-image IoU (Jaccard) at original resolution, the ISIC definition, with the stored inference "
        "settings; 95% bootstrap intervals over images.",
        "",
        "| evaluation | n | IoU [95% CI] | Dice | drop vs test [95% CI] |",
        "|---|--:|--:|--:|--:|",
    ]
    for evaluation, entry in results.get("evaluations", {}).items():
        drop = entry.get("drop")
        drop_text = f"{drop['delta']:+.4f} [{drop['ci95'][0]:+.4f}, {drop['ci95'][1]:+.4f}]" if drop else ""
        lines.append(f"| {evaluation} | {entry['n']} | {_interval(entry['iou'])} | {entry['dice']:.4f} | {drop_text} |")
    cv = results.get("cv")
    if cv:
        folds = f"{cv['model']}, {cv['folds']} folds, {cv['n']} pairs out of fold"
        lines += ["", f"Cross-validation ({folds}): IoU {cv['mean']:.4f} +- {cv['se']:.4f} (mean +- SE over folds)."]
    review = results.get("review")
    if review:
        lines += ["", f"Review threshold: quality < {review['threshold']:.4g} is flagged for a person to check."]
        for evaluation, values in review.get("by_evaluation", {}).items():
            shown = ", ".join(f"{k.removeprefix('review_')} {v:.3f}" for k, v in values.items())
            lines.append(f"- {evaluation}: {shown}")
    if card.get("calibration"):
        lines += ["", *_calibration_markdown(card["calibration"])]
    lines += [
        "",
        "## Intended use and limitations",
        "",
        card["intended_use"],
        "",
        *(f"- {limit}" for limit in card["limitations"]),
        "",
        "## Recipe",
        "",
        "As the checkpoints record it (the architecture's config, each training phase's config, the inference "
        "settings):",
        "",
        "```json",
        json.dumps(card["recipe"], indent=2),
        "```",
        "",
        "## Provenance",
        "",
        *(f"- {key}: `{value}`" for key, value in card["provenance"].items()),
        "",
    ]
    return "\n".join(lines)


def card_results(tables: dict, review_threshold: float | None, review: dict[str, dict], cv: dict | None) -> dict:
    """The card's ``results``: per evaluation (``tables``: evaluation name -> the exported model's per-image
    table, ``test`` among them) ``n``, mean IoU with its 95% interval, mean Dice and, for the others, the drop
    from the test split with its interval (independent samples); ``review``: evaluation -> ``review_*``
    metrics at ``review_threshold``; ``cv``: the CV summary of the model's recipe (or None)."""
    from lesionseg.evaluation.stats import independent_difference, mean_interval

    evaluations = {}
    test = tables.get("test")
    for name, table in tables.items():
        mean, ci95 = mean_interval(table["orig_jaccard"])
        entry = {"n": len(table), "iou": {"mean": mean, "ci95": list(ci95)}, "dice": float(table["orig_dice"].mean())}
        if name != "test" and test is not None:
            drop = independent_difference(test["orig_jaccard"], table["orig_jaccard"])
            entry["drop"] = {"delta": drop.delta, "ci95": list(drop.ci95)}
        evaluations[name] = entry
    results: dict = {"evaluations": evaluations}
    if cv:
        results["cv"] = cv
    if review_threshold is not None:
        results["review"] = {"threshold": review_threshold, "by_evaluation": review}
    return results
