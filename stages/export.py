"""Stage export: the chosen model to ONNX, and to MLflow as a pyfunc model."""

import argparse
from pathlib import Path

from lesionseg import tracking
from lesionseg.checkpoint import read_checkpoint
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

    mlflow_setup(params)
    run_id = read_checkpoint(checkpoints[chosen])["extra"].get("mlflow_run_id")
    with tracking.start_run(chosen, {"lesionseg.exported": "true"}, run_id=run_id):
        uri = log_pyfunc_model(checkpoints[chosen])
    print(f"exported {chosen} to {args.onnx}; MLflow model {uri}")


if __name__ == "__main__":
    main(run)
