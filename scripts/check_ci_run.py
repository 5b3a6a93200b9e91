"""Check a CI pipeline run (``make ci-pipeline``), in the project folder it ran in.

- ``reports/metrics.json`` holds the expected models (``--models``, in order), every number finite;
- the MLflow store (``mlflow.tracking_uri`` of params.yaml) has one parent run named NAME, the DVC
  experiment, with a child run per model whose test IoU is the one in ``reports/metrics.json``;
  with cross-validation off, no other children;
- with ``--cv-pairs N``: ``reports/cv/metrics.json`` has every trained model (not the ensemble),
  each scored out of fold on N pairs in ``cv.folds`` folds;
- with ``--external SET N`` (repeatable): every model has the external set's scores on N images in
  ``reports/metrics.json``, per-image tables in ``reports/per_image/SET/``, and the same IoU on its
  MLflow run (``SET_orig_jaccard``). A set calibrated in the pipeline (``evaluate.calibrate``) is two
  such sets on the same held-out images: ``SET`` as trained and ``SET_calibrated``.

Usage: python scripts/check_ci_run.py NAME [--models M ...] [--cv-pairs N] [--external SET N ...]
"""

import argparse
import json
import math
import sys
from pathlib import Path

import mlflow
import yaml

ENSEMBLE = "cv_ensemble"  # lesionseg.model.ensemble.ENSEMBLE_NAME; not imported: that would import torch


def check(name: str, models: list[str] | None, cv_pairs: int | None, externals=()) -> list[str]:
    problems = []
    params = yaml.safe_load(Path("params.yaml").read_text())
    metrics = json.loads(Path("reports/metrics.json").read_text())
    if models and list(metrics) != models:
        problems.append(f"models in reports/metrics.json: {list(metrics)}, expected {models}")
    for model, values in metrics.items():
        bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            problems.append(f"reports/metrics.json: {model} has non-finite {bad}")

    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=[params["mlflow"]["experiment"]])
    parents = runs[runs["tags.mlflow.parentRunId"].isna() & (runs["tags.mlflow.runName"] == name)]
    if len(parents) != 1:
        return [*problems, f"MLflow: {len(parents)} parent runs named {name!r}, expected 1"]
    children = runs[runs["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]]
    logged = dict(zip(children["tags.mlflow.runName"], children["metrics.test_orig_jaccard"]))
    for model, values in metrics.items():
        if model not in logged:
            problems.append(f"MLflow: no run {model!r} under {name!r} (it has {sorted(logged)})")
        elif abs(logged[model] - values["orig_jaccard"]) > 1e-9:
            problems.append(f"MLflow: {model} test_orig_jaccard {logged[model]} != {values['orig_jaccard']}")
    folds = params["cv"]["folds"]
    if not folds and sorted(logged) != sorted(metrics):
        problems.append(f"MLflow runs under {name!r}: {sorted(logged)}, expected {sorted(metrics)}")

    if cv_pairs is not None:
        cv = json.loads(Path("reports/cv/metrics.json").read_text())
        trained = sorted(m for m in metrics if m != ENSEMBLE)
        if sorted(cv) != trained:
            problems.append(f"models in reports/cv/metrics.json: {sorted(cv)}, expected {trained}")
        for model, values in cv.items():
            if values.get("n") != cv_pairs or values.get("folds") != folds:
                problems.append(f"reports/cv/metrics.json: {model} n={values.get('n')} folds={values.get('folds')}")
    for set_name, n in externals:
        n = int(n)
        logged_set = dict(zip(children["tags.mlflow.runName"], children.get(f"metrics.{set_name}_orig_jaccard", [])))
        for model, values in metrics.items():
            scores = values.get("external", {}).get(set_name, {})
            table = Path("reports/per_image") / set_name / f"{model}.csv"
            if scores.get("n") != n or not table.is_file():
                problems.append(f"{model}: external set {set_name!r} n={scores.get('n')} (expected {n}), {table}")
            elif abs(logged_set.get(model, float("nan")) - scores["orig_jaccard"]) > 1e-9:
                problems.append(f"MLflow: {model} {set_name}_orig_jaccard {logged_set.get(model)} != metrics.json")
    print(f"MLflow runs of {name}: {sorted(logged)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the DVC experiment (and MLflow parent run) name")
    parser.add_argument("--models", nargs="+", help="expected models of reports/metrics.json, in order")
    parser.add_argument("--cv-pairs", type=int, help="expected out-of-fold pairs per model (cv.folds > 0)")
    external_help = "an external set and its image count (repeatable)"
    parser.add_argument("--external", nargs=2, action="append", default=[], metavar=("SET", "N"), help=external_help)
    args = parser.parse_args()
    problems = check(args.name, args.models, args.cv_pairs, args.external)
    for problem in problems:
        print(f"check_ci_run: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.name}: reports/metrics.json and the MLflow runs agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
