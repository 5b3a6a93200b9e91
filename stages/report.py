"""Stage report: curves, sample predictions, overlays, error maps and the comparison table."""

import argparse
from pathlib import Path

import mlflow

from lesionseg import tracking
from lesionseg.data.cache import Split
from lesionseg.evaluation.evaluate import CALIBRATED_SUFFIX
from lesionseg.evaluation.selection import choose_model, pipeline_checkpoints
from lesionseg.experiments.model_metrics import parse_metrics
from lesionseg.experiments.runs import read_tables
from lesionseg.model.checkpoint import load_model
from lesionseg.report.pipeline_report import load_histories, write_pipeline_report
from stages.external_sets import load_external_sets
from stages.launch import main, timed_work
from stages.params import load_params, section
from stages.runlog import mlflow_setup


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--histories", type=Path, nargs="+", required=True, help="history CSVs or folders of them")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True, help="per-image test scores of the evaluate stage")
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True, help="comparison table stem (.md and .csv written)")
    parser.add_argument(
        "--external", type=Path, required=True, help="folder of the external@<set> stages' outputs (<set>.pt)"
    )
    args = parser.parse_args()
    params = load_params()
    checkpoints = pipeline_checkpoints(args.frozen, args.finetuned)
    chosen = choose_model(checkpoints, section(params, "report").model)
    model, _ = load_model(checkpoints[chosen])
    external = load_external_sets(params, args.external)
    scored = [*external, *(name + CALIBRATED_SUFFIX for name in section(params, "evaluate").calibrate or {})]
    with timed_work():
        write_pipeline_report(
            model,
            chosen,
            Split.load(args.data / "test.pt"),
            parse_metrics(args.metrics.read_text(), args.metrics),
            load_histories(args.histories),
            args.figures,
            args.table,
            samples=section(params, "report").samples,
            per_image=read_tables(args.per_image),
            external=external,
            external_per_image={name: read_tables(args.per_image / name) for name in scored},
        )

    parent = mlflow_setup(params)
    with tracking.start_run("", {}, run_id=parent):  # the figures belong to the whole pipeline execution
        mlflow.log_artifacts(str(args.figures), "report")
        mlflow.log_artifact(str(args.table.with_suffix(".md")), "report")


if __name__ == "__main__":
    main(run)
