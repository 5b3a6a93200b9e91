"""Stage export: the chosen model to ONNX, and to MLflow as a pyfunc model."""

import argparse
from pathlib import Path

from lesionseg import tracking
from lesionseg.export import export_onnx, log_pyfunc_model
from lesionseg.selection import choose_model, pipeline_checkpoints
from stages.common import get, load_params, main, mlflow_setup


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    checkpoints = pipeline_checkpoints(args.frozen, args.finetuned)
    chosen = choose_model(checkpoints, get(params, "export.model"))
    export_onnx(checkpoints[chosen], args.onnx)

    parent = mlflow_setup(params)
    with tracking.start_run("", {"lesionseg.exported_model": chosen}, run_id=parent):  # the execution's model
        uri = log_pyfunc_model(checkpoints[chosen])
    print(f"exported {chosen} to {args.onnx}; MLflow model {uri}")


if __name__ == "__main__":
    main(run)
