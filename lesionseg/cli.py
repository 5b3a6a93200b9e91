"""The ``lesionseg`` command: summary, predict, export."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lesionseg.encoder import EncoderWeightsError
from lesionseg.errors import DataError
from lesionseg.model import ModelConfig, build_model, count_parameters
from lesionseg.postprocess import PostprocessConfig

SUMMARY_LEVELS = ("0", "1", "2", "3", "all")


def parameter_summary() -> dict[str, dict[str, int]]:
    """Parameter counts for every unfreeze level, from a randomly initialised model (no download)."""
    model = build_model(ModelConfig(encoder_weights="none"))
    summary = {}
    for level in SUMMARY_LEVELS:
        model.set_unfreeze_level(level)
        summary[level] = count_parameters(model)
    return summary


def cmd_summary(args) -> int:
    summary = parameter_summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'unfreeze':>8}  {'total':>10}  {'trainable':>10}  {'frozen':>10}")
    for level, counts in summary.items():
        print(f"{level:>8}  {counts['total']:>10,}  {counts['trainable']:>10,}  {counts['frozen']:>10,}")
    return 0


def cmd_predict(args) -> int:
    from lesionseg.checkpoint import load_model
    from lesionseg.inference import select_device
    from lesionseg.predict import collect_inputs, predict_files

    device = select_device(args.device)
    model, checkpoint = load_model(args.checkpoint)
    model.to(device)
    paths = collect_inputs(args.inputs)
    if not paths:
        print("lesionseg predict: no input images found", file=sys.stderr)
        return 2
    summary = predict_files(
        model,
        paths,
        checkpoint["preprocessing"]["size"],
        args.output,
        threshold=args.threshold,
        tta=args.tta,
        postprocess=PostprocessConfig(keep_largest=args.keep_largest, fill_holes=args.fill_holes),
        overlays=args.overlay,
        batch_size=args.batch_size,
        device=device,
        progress=not args.quiet,
    )
    ok = len(paths) - len(summary.failed)
    print(
        f"predicted {ok} of {len(paths)} image(s) into {args.output}"
        + (f"; {len(summary.failed)} failed:" if summary.failed else "")
    )
    for path, problem in summary.failed.items():
        print(f"  {path}: {problem}")
    return 1 if summary.failed else 0


def cmd_export(args) -> int:
    from lesionseg.export import export_onnx

    export_onnx(args.checkpoint, args.onnx)
    print(f"wrote {args.onnx}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lesionseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="parameter counts for every unfreeze level")
    p.add_argument("--json", action="store_true", help='one JSON object keyed by level ("0".."3", "all")')
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("predict", help="segment image files or folders")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--output", type=Path, default=Path("predictions"))
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--tta", action="store_true", help="average predictions over flips")
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest connected component")
    p.add_argument("--fill-holes", action="store_true", help="fill holes inside the predicted lesion")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--onnx", type=Path, required=True)
    p.set_defaults(func=cmd_export)
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
