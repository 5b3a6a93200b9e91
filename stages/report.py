"""Stage report: curves, sample predictions, overlays, error maps and the comparison table."""

import argparse
import json
from pathlib import Path

import mlflow
import pandas as pd

from lesionseg import atomic, report, tracking
from lesionseg.cache import Split
from lesionseg.checkpoint import load_model, read_checkpoint
from lesionseg.selection import choose_model, pipeline_checkpoints
from stages.common import get, load_params, main, mlflow_setup


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--histories", type=Path, nargs="+", required=True, help="history CSVs or folders of them")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True, help="comparison table stem (.md and .csv written)")
    args = parser.parse_args()
    params = load_params()
    samples, which = get(params, "report.samples"), get(params, "report.model")
    metrics = json.loads(args.metrics.read_text())
    checkpoints = pipeline_checkpoints(args.frozen, args.finetuned)
    histories = {}
    for entry in args.histories:
        for csv in sorted(entry.glob("*.csv")) if entry.is_dir() else [entry]:
            histories[csv.stem] = pd.read_csv(csv)

    table = report.comparison_table(metrics)
    chosen = choose_model(checkpoints, which)
    model, _ = load_model(checkpoints[chosen])
    test = Split.load(args.data / "test.pt")
    images, truths, preds, ids, scores = report.sample_predictions(model, test, samples)
    title = f"{chosen} on test images (model resolution {test.size}px)"

    with atomic.atomic_dir(args.figures) as figures:
        report.plot_curves(histories, figures / "curves.png")
        report.plot_samples(images, truths, preds, ids, scores, title, figures / "samples.png")
        report.plot_grid(
            [report.overlay(i, p, t) for i, p, t in zip(images, preds, truths)],
            ids,
            scores,
            f"{title}: prediction outline yellow, ground truth cyan",
            figures / "overlays.png",
        )
        report.plot_grid(
            [report.error_map(p, t) for p, t in zip(preds, truths)],
            ids,
            scores,
            f"{title}: true positive green, false positive red, false negative blue",
            figures / "error_maps.png",
        )
        report.plot_comparison(table, figures / "comparison.png")
        report.write_table(table, args.table.with_suffix(".csv"), args.table.with_suffix(".md"))

    mlflow_setup(params)
    parent = read_checkpoint(checkpoints["frozen"])["extra"].get("mlflow_run_id")
    if parent:
        with tracking.start_run("frozen", {}, run_id=parent):
            mlflow.log_artifacts(str(args.figures), "report")
            mlflow.log_artifact(str(args.table.with_suffix(".md")), "report")


if __name__ == "__main__":
    main(run)
