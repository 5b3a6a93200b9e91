"""Measure the mask quality score on a cross-validation run's fold models; draw the risk-coverage figure.

Each fold model (``models/cv/fold<k>/<--model>.pt``) scores its held-out pairs (out of fold, so every training
pair once, by the model that did not see it) and every external set, with the run's ``evaluate`` settings
(flip TTA, clean-up, the zoom-in second pass). As in the ``cv_score`` stage, the review threshold is the
out-of-fold quality quantile that flags ``--review-fraction`` of the masks, and an external set's metrics are
the mean over the fold models.
Prints the review metrics (:func:`lesionseg.evaluation.review.review_metrics`) as JSON and draws the curves
with the report's :func:`~lesionseg.report.figures.plot_risk_coverage` (an external set's curve pools its
images as scored by every fold model). The README's figure:

    python scripts/quality_figure.py --run <a project that ran cv_train> --out docs/img/risk_coverage.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_figures import shrink  # noqa: E402  (scripts/ is on sys.path when this file runs)

from lesionseg.data.cache import Split  # noqa: E402
from lesionseg.data.external import ExternalSet, prepare_external  # noqa: E402
from lesionseg.evaluation import review  # noqa: E402
from lesionseg.evaluation.fold_scores import score_fold  # noqa: E402
from lesionseg.inference.quality import needs_review  # noqa: E402
from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig  # noqa: E402
from lesionseg.report.figures import plot_risk_coverage  # noqa: E402
from lesionseg.training.folds import folds_from_manifest  # noqa: E402


def score(tables: list[pd.DataFrame], threshold: float) -> dict:
    """Review metrics of each table at ``threshold``, averaged over the tables, with the mean IoU of all masks."""
    rows = []
    for table in tables:
        quality, iou = table[review.QUALITY_COLUMN], table[review.IOU_COLUMN]
        rows.append({"jaccard": iou.mean(), **review.review_metrics(quality, iou, threshold)})
    return {k: round(float(v), 4) for k, v in pd.DataFrame(rows).mean().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a project that ran cv_train (params.yaml inside)")
    parser.add_argument("--model", default="finetune_all", help="fold checkpoint name")
    parser.add_argument("--external", action="append", default=None, metavar="NAME=FOLDER", help="default: params")
    parser.add_argument("--review-fraction", type=float, default=None, help="default: evaluate.review_fraction")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    parser.add_argument("--max-kb", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    evaluate = yaml.safe_load((args.run / "params.yaml").read_text())["evaluate"]
    fraction = args.review_fraction if args.review_fraction is not None else evaluate.get("review_fraction", 0.2)
    settings = InferenceSettings(
        tta=evaluate["tta"],
        postprocess=PostprocessConfig(evaluate["keep_largest"], evaluate["fill_holes"]),
        zoom=ZoomConfig(**evaluate.get("zoom", {})),  # a run from before the zoom-in second pass: off
    )
    if args.external is None:
        external = dict(evaluate.get("external") or {})
    else:
        external = dict(entry.split("=", 1) for entry in args.external)
    prepared = args.run / "data/prepared"
    pairs = Split.concat([Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")])
    folds = folds_from_manifest(pairs, json.loads((args.run / "models/cv/folds.json").read_text()))
    sets = {
        name: prepare_external(ExternalSet(name, (args.run / folder).resolve()), pairs.images.shape[1], 0)[0]
        for name, folder in external.items()
    }

    oof, scored = [], {name: [] for name in sets}
    for fold in folds:  # as the cv_score stage scores them
        checkpoint = {args.model: args.run / f"models/cv/fold{fold.index}/{args.model}.pt"}
        heldout, external_tables = score_fold(checkpoint, fold, sets, settings)
        oof.append(heldout[args.model])
        for name in sets:
            scored[name].append(external_tables[name][args.model])
        print(f"fold {fold.index} scored", file=sys.stderr, flush=True)

    threshold = review.review_threshold(pd.concat(oof)[review.QUALITY_COLUMN], fraction)
    result = {"review_fraction": fraction, "review_threshold": round(threshold, 4)}
    result["out_of_fold"] = score([pd.concat(oof)], threshold)
    result.update({name: score(tables, threshold) for name, tables in scored.items()})
    print(json.dumps(result, indent=1))

    curves = {"CV out of fold": pd.concat(oof)}
    curves.update({f"{name} ({len(folds)} fold models)": pd.concat(tables) for name, tables in scored.items()})
    for table in curves.values():
        table[review.REVIEW_COLUMN] = needs_review(table[review.QUALITY_COLUMN], threshold)
    plot_risk_coverage(curves, f"Risk-coverage, {len(folds)} fold models ({args.model})", args.out)
    print(f"{args.out}: {shrink(args.out, args.out, max_kb=args.max_kb) // 1024} KB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
