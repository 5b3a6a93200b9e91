"""The ``lesionseg`` command, for the model's users: summary, predict, evaluate, calibrate, export, compare, recipe.

The repository's own records and CI report are scripts: ``scripts/results.py`` and ``scripts/ci_report.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lesionseg.errors import DataError
from lesionseg.model.encoder import EncoderWeightsError


def _cmd_summary(args) -> int:
    from lesionseg.model.model import parameter_counts_by_level

    summary = parameter_counts_by_level()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'unfreeze':>8}  {'total':>10}  {'trainable':>10}  {'frozen':>10}")
    for level, counts in summary.items():
        print(f"{level:>8}  {counts['total']:>10,}  {counts['trainable']:>10,}  {counts['frozen']:>10,}")
    return 0


def _load_for_inference(args):
    """The model of ``--checkpoint`` on ``--device``, its checkpoint dict, and its stored inference
    settings with the command line's overrides."""
    from lesionseg.inference.exported import stored_settings
    from lesionseg.inference.settings import OVERRIDABLE
    from lesionseg.model.checkpoint import load_models
    from lesionseg.runtime import select_device

    device = select_device(args.device)
    model, checkpoint = load_models(args.checkpoint)
    model.to(device)
    try:
        stored = stored_settings(checkpoint)
    except ValueError as exc:  # an incomplete or unknown stored record: the model file is at fault
        raise DataError(args.checkpoint[0], f"{exc}: export the model again") from exc
    settings = stored.override({k: getattr(args, k, None) for k in OVERRIDABLE})
    return model, checkpoint, settings, device


def _cmd_predict(args) -> int:
    from lesionseg.serving.predict_files import collect_inputs, first_names, predict_files

    model, checkpoint, settings, device = _load_for_inference(args)
    if settings.review_threshold is None:
        if args.review_only:
            print(
                f"lesionseg predict: --review-only needs a review threshold: {args.checkpoint[0]} stores none "
                "(a training checkpoint, or exported without one); give --review-threshold",
                file=sys.stderr,
            )
            return 2
        print(
            f"note: {args.checkpoint[0]} stores no review threshold: quality.csv has each mask's quality and an "
            "empty review column (no mask flagged); --review-threshold sets one",
            file=sys.stderr,
        )
    inputs = collect_inputs(args.inputs)
    paths = inputs.images
    if inputs.skipped:
        print(
            f"note: skipped {len(inputs.skipped)} mask or overlay file(s) among the inputs (named *_mask.png, "
            f"*_overlay.png, or as a mask beside its image): {first_names([p.name for p in inputs.skipped])}",
            file=sys.stderr,
        )
    if not paths:
        print("lesionseg predict: no input images found", file=sys.stderr)
        return 2
    summary = predict_files(
        model,
        paths,
        checkpoint["preprocessing"]["size"],
        args.output,
        settings,
        overlays=args.overlay,
        batch_size=args.batch_size,
        device=device,
        progress=not args.quiet,
        review_only=args.review_only,
        overwrite=args.overwrite,
    )
    ok = len(paths) - len(summary.failed)
    if settings.review_threshold is None:
        review = "no review threshold, none flagged"
    else:
        written = "only their masks written" if args.review_only else "see review in quality.csv"
        review = f"{summary.flagged} flagged for review (quality < {settings.review_threshold:.4g}; {written})"
    print(
        f"predicted {ok} of {len(paths)} image(s) into {args.output} ({_describe(settings, checkpoint)}); {review}"
        + (f"; {len(summary.failed)} failed:" if summary.failed else "")
    )
    for path, problem in summary.failed.items():
        print(f"  {path}: {problem}")
    return 1 if summary.failed else 0


def _describe(settings, checkpoint: dict) -> str:
    from lesionseg.inference.exported import has_inference_settings

    cleanup, zoom = settings.postprocess, settings.zoom
    described = (
        f"tta={'on' if settings.tta else 'off'}, threshold={settings.threshold:g}, "
        f"keep_largest={'on' if cleanup.keep_largest else 'off'}, fill_holes={'on' if cleanup.fill_holes else 'off'}"
    )
    if zoom.enabled:
        described += f", zoom=on (margin {zoom.margin:g}, box < {zoom.max_share:g} of the image)"
    else:
        described += ", zoom=off"
    if not has_inference_settings(checkpoint):  # a training checkpoint: say where the settings came from
        described += "; the checkpoint stores no inference settings: the plain model and the flags given"
    return described


def _cmd_evaluate(args) -> int:
    from lesionseg import atomic
    from lesionseg.data.external import ExternalSet, prepare_external
    from lesionseg.evaluation.evaluate import TEST_TABLE, add_review, evaluate_model
    from lesionseg.inference.exported import has_inference_settings

    model, checkpoint, settings, device = _load_for_inference(args)
    spec = ExternalSet(args.name, args.images, args.masks, args.mask_suffix)
    split, pairing = prepare_external(spec, checkpoint["preprocessing"]["size"], args.workers)
    metrics, table = evaluate_model(model, split, settings, args.batch_size, device)
    add_review(metrics, {TEST_TABLE: table}, settings.review_threshold)
    if args.per_image:
        atomic.write_text(args.per_image, table.to_csv(index=False, float_format="%.6f"))
    if args.json:
        stored = has_inference_settings(checkpoint)
        print(json.dumps({"n": len(split), **metrics, "settings": settings.record(), "settings_stored": stored}))
    else:
        print(
            f"{len(split)} image(s) of {args.images} ({_describe(settings, checkpoint)}): "
            f"IoU {metrics['orig_jaccard']:.4f}, Dice {metrics['orig_dice']:.4f}, "
            f"thresholded IoU {metrics['orig_jaccard_thresholded']:.4f} "
            "(per-image means at original resolution, the ISIC definition)"
        )
        if "review_auroc" in metrics:
            print(f"mask quality: AUROC {metrics['review_auroc']:.3f} for telling masks with IoU < 0.7 from the rest")
        else:
            print("mask quality: no AUROC (these masks are all above, or all below, IoU 0.7)")
        if settings.review_threshold is None:
            print("the model stores no review threshold: no mask flagged (review metrics need one)")
        else:
            parts = [f"{metrics['review_flagged']:.1%} flagged"]
            if "review_caught" in metrics:
                parts.append(f"{metrics['review_caught']:.1%} of failures caught")
            if "review_accepted_jaccard" in metrics:
                parts.append(f"accepted masks' IoU {metrics['review_accepted_jaccard']:.4f}")
            print(f"review (quality < {settings.review_threshold:.4g}): {', '.join(parts)}")
    for line in pairing.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0


def _cmd_calibrate(args) -> int:
    from lesionseg import atomic
    from lesionseg.data.external import ExternalSet, prepare_external
    from lesionseg.evaluation.calibrate import MIN_IMAGES, calibrate, calibrated_model
    from lesionseg.serving.model_card import calibrated_card, card_markdown, read_card

    card = read_card(args.card) if args.card else None  # a bad card stops before any work
    model, checkpoint, settings, device = _load_for_inference(args)
    spec = ExternalSet(args.name, args.images, args.masks, args.mask_suffix)
    split, pairing = prepare_external(spec, checkpoint["preprocessing"]["size"], args.workers)
    for line in pairing.skipped:
        print(f"skipped {line}", file=sys.stderr)
    if len(split) < MIN_IMAGES:
        raise DataError(args.images, f"calibration needs at least {MIN_IMAGES} labelled images, found {len(split)}")
    result = calibrate(model, split, settings, batch_size=args.batch_size, device=device)
    package = calibrated_model(checkpoint, result, args.images, args.masks)
    card_stem = args.output.with_name(args.output.stem + "_card")
    if card is not None:
        card = calibrated_card(card, package)
        atomic.write_json(card_stem.with_suffix(".json"), card)
        atomic.write_text(card_stem.with_suffix(".md"), card_markdown(card))
    atomic.torch_save(package, args.output)
    if args.json:
        print(json.dumps(package["calibration"]))
        return 0
    before, after = result.before, result.after
    low, high = result.held_out.ci95
    print(
        f"{len(split)} image(s) of {args.images}: IoU {result.iou_before.mean():.4f} at the stored threshold "
        f"{before.threshold:g}, {result.iou_best.mean():.4f} at the best threshold {result.best:g} "
        f"(in sample: {result.in_sample.delta:+.4f} [{result.in_sample.ci95[0]:+.4f}, {result.in_sample.ci95[1]:+.4f}])"
    )
    print(
        f"held out (each image at the threshold chosen on the others): {result.held_out.delta:+.4f} "
        f"[{low:+.4f}, {high:+.4f}] (paired 95% bootstrap interval)"
    )
    if result.adopted:
        review = f"{after.review_threshold:.4g}" if after.review_threshold is not None else "none"
        was = f"{before.review_threshold:.4g}" if before.review_threshold is not None else "none"
        print(
            f"calibrated: the interval lies above 0; threshold {before.threshold:g} -> {after.threshold:g}, "
            f"review threshold {was} -> {review}"
        )
    else:
        print("kept the stored settings: the held-out gain's interval does not lie above 0")
    print(f"wrote {args.output} ({_describe(after, package)})" + (f" and {card_stem}.md/.json" if card else ""))
    return 0


def _cmd_export(args) -> int:
    from lesionseg.serving.export import export_onnx

    export_onnx(args.checkpoint, args.onnx)
    print(f"wrote {args.onnx}" + (f" (ensemble of {len(args.checkpoint)})" if len(args.checkpoint) > 1 else ""))
    return 0


def _cmd_compare(args) -> int:
    from lesionseg.evaluation.lesion_size import split_by_size
    from lesionseg.experiments.compare import as_one_model, compare_runs, format_markdown, format_text
    from lesionseg.experiments.runs import read_run

    a, b = (read_run(source, args.set, args.per_image_dir, args.reports_dir) for source in (args.a, args.b))
    if Path(args.a).is_file() and Path(args.b).is_file():
        a, b = as_one_model(a, b)  # two tables (frozen.csv, finetune_all.csv): compared whatever their names
    if args.by_size:
        a.tables, b.tables = split_by_size(a.tables), split_by_size(b.tables)
    comparison = compare_runs(a, b, args.metric, args.model or None)
    results, notes = comparison.results, comparison.notes
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
        for note in notes:  # stdout stays one JSON document
            print(note, file=sys.stderr)
        return 0
    if args.md:
        print(format_markdown(results))
        if notes:
            print("\n" + "\n".join(f"- {note}" for note in notes))
        return 0
    print(
        f"A = {args.a}, B = {args.b}: per-image {args.metric}, paired by image; change = B - A, "
        "its 95% bootstrap interval (BCa) and Wilcoxon p. better / worse: the interval excludes 0."
    )
    print()
    print(format_text(results))
    if notes:
        print()
        print("\n".join(notes))
    return 0


def _cmd_recipe(args) -> int:
    from lesionseg.recipes import dvc_options, load_recipe, recipe_path

    recipe = load_recipe(recipe_path(args.name, args.recipes))
    kept = {k: v for k, v in recipe.items() if not k.startswith(tuple(f"{s}." for s in args.except_ or ()))}
    print(" ".join(dvc_options(kept)))
    return 0


def _inference_options(p: argparse.ArgumentParser, batch_size: int) -> None:
    # Defaults (None) come from the model: the settings it was evaluated with, else the plain model's.
    p.add_argument("--threshold", type=float, help="probability threshold (model's setting, else 0.5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="average predictions over flips")
    p.add_argument(
        "--keep-largest", action=argparse.BooleanOptionalAction, help="keep only the largest connected component"
    )
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, help="fill holes inside the predicted lesion")
    p.add_argument(
        "--zoom", action=argparse.BooleanOptionalAction, help="zoom-in second pass on small lesions (model's setting)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per forward pass")


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="parameter counts for every unfreeze level")
    p.add_argument("--json", action="store_true", help='one JSON object keyed by level ("0".."3", "all")')
    p.set_defaults(func=_cmd_summary)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment image files or folders")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="a model (the export stage's models/model.pt or any checkpoint); several: their ensemble",
    )
    p.add_argument("--output", type=Path, default=Path("predictions"))
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --output that no predict run wrote there (never an input file)",
    )
    p.add_argument(
        "--review-only", action="store_true", help="write only the masks flagged for review (quality.csv lists all)"
    )
    p.add_argument(
        "--review-threshold", type=float, help="flag masks whose quality is below this (default: the model's)"
    )
    _inference_options(p, batch_size=8)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _labelled_folder_options(p: argparse.ArgumentParser, name: str) -> None:
    """A labelled folder as evaluate and calibrate read it, and the decoding processes."""
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="the labelled folder, or its images")
    p.add_argument("--masks", type=Path, metavar="DIR", help="the masks' folder, if not inside or beside --images")
    p.add_argument("--mask-suffix", help="suffix after the image stem in mask names, where several fit ('' = none)")
    p.add_argument("--name", default=name, help="the set's name in messages (letters, digits, _)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0 = this one)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a labelled folder (IoU/Dice per image, original resolution)",
        description="Score a model on any labelled folder, exactly as the pipeline scores the test split: "
        "images/ + masks/ inside DIR, masks beside the images, or --masks DIR; a mask is "
        "<image stem>{_segmentation,_Segmentation,_mask,_lesion,}.<ext>.",
    )
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="as for predict; several: an ensemble")
    _labelled_folder_options(p, name="external")
    p.add_argument("--json", action="store_true", help="print n, the metrics and the settings used as one JSON object")
    p.add_argument("--per-image", type=Path, metavar="CSV", help="write the per-image scores here")
    _inference_options(p, batch_size=32)
    p.set_defaults(func=_cmd_evaluate)


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose a model's threshold for a clinic's annotation style from a few of its labelled images",
        description="Search the probability threshold that maximises the mean per-image IoU (original "
        "resolution, the model's TTA, zoom and clean-up) on a labelled folder (any layout evaluate accepts) and "
        "write the model again with it: the same weights, the calibrated settings and a calibration record. The "
        "stored settings stay unless the held-out gain's paired 95%% interval lies above 0.",
    )
    p.add_argument("--checkpoint", type=Path, nargs=1, required=True, help="the model (models/model.pt)")
    _labelled_folder_options(p, name="calibration")
    p.add_argument("--output", type=Path, required=True, help="the calibrated model file (e.g. calibrated.pt)")
    p.add_argument(
        "--card",
        type=Path,
        metavar="JSON",
        help="the model's card (models/model_card.json): also write <output>_card.json/.md with the calibration",
    )
    p.add_argument("--json", action="store_true", help="print the calibration record as one JSON object")
    _inference_options(p, batch_size=32)
    p.set_defaults(func=_cmd_calibrate)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model (several checkpoints: their ensemble) to ONNX")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    p.add_argument("--onnx", type=Path, required=True)
    p.set_defaults(func=_cmd_export)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of two experiments, revisions, reports folders or per-image CSVs",
        description="Compare A and B image by image: each is a DVC experiment name or git revision (its "
        "reports folder read through DVC), a reports folder, or a per-image CSV file or folder of them. "
        "For each model on both sides, every evaluation both sides have: test, external <set>, "
        "cv out-of-fold, external <set>, fold-model mean. An evaluation or model on one side only is "
        "skipped with a note.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--metric", default="orig_jaccard", help="per-image column (default orig_jaccard)")
    p.add_argument("--model", action="append", help="compare only this model (repeatable)")
    p.add_argument(
        "--per-image-dir",
        help="compare only this folder of per-image tables, read at the revisions (e.g. reports/cv/per_image)",
    )
    p.add_argument("--reports-dir", default="reports", help="the reports folder read at a revision")
    p.add_argument("--set", help="compare only on this external set (evaluate.external)")
    p.add_argument(
        "--by-size",
        action="store_true",
        help="also compare each evaluation's images by true lesion size (< 5%%, 5-15%%, 15-40%%, >= 40%% of the image)",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="one JSON list: evaluation, model, n, mean_a, mean_b, delta, ci95, p_value, verdict",
    )
    output.add_argument(
        "--md",
        action="store_true",
        help="one Markdown table: (evaluation,) model, n, mean base (A), mean head (B), change, 95%% CI, p, verdict",
    )
    p.set_defaults(func=_cmd_compare)


def _add_recipe(sub) -> None:
    p = sub.add_parser(
        "recipe",
        help="a recipe of recipes/ as `dvc exp run` options",
        description="Print a recipe (recipes/NAME.yaml, or a YAML file) as `-S key=value` options for dvc exp run, "
        "e.g. dvc exp run -n reference $(lesionseg recipe reference). params.yaml is the default recipe.",
    )
    p.add_argument("name", help="recipe name (reference) or a YAML file")
    p.add_argument("--recipes", type=Path, default=Path("recipes"), help="folder of recipes (default recipes/)")
    p.add_argument(
        "--except",
        dest="except_",
        action="append",
        metavar="SECTION",
        help="leave this params.yaml section (e.g. evaluate) at its default (repeatable): "
        "`--except evaluate` is the recipe's training with the default inference",
    )
    p.set_defaults(func=_cmd_recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lesionseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_summary, _add_predict, _add_evaluate, _add_calibrate, _add_export, _add_compare, _add_recipe):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, OSError, EncoderWeightsError) as exc:
        print(f"lesionseg {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
