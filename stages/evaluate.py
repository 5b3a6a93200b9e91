"""Stage evaluate: every trained model on the test split -> reports/metrics.json + per-image CSVs.

Each model's metrics also hold its validation-split scores (``val_`` prefix,
same definitions, TTA and post-processing): the split to choose a recipe on.
"""

import argparse
from pathlib import Path

import mlflow

from lesionseg import atomic, tracking
from lesionseg.cache import Split
from lesionseg.evaluate import evaluate_checkpoint
from lesionseg.inference import select_device
from lesionseg.postprocess import PostprocessConfig
from lesionseg.selection import pipeline_checkpoints
from stages.common import build, get, load_params, main, mlflow_setup, run_tags


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    batch_size, tta = get(params, "evaluate.batch_size"), get(params, "evaluate.tta")
    postprocess = build(PostprocessConfig, params, "evaluate")
    device = select_device(get(params, "runtime.device"))
    test, val = Split.load(args.data / "test.pt"), Split.load(args.data / "val.pt")
    mlflow_setup(params)

    all_metrics, parent = {}, None
    with atomic.atomic_dir(args.per_image) as per_image_dir:
        for name, path in pipeline_checkpoints(args.frozen, args.finetuned).items():
            metrics, table, checkpoint = evaluate_checkpoint(
                path, test, batch_size, device, tta, postprocess, val_split=val
            )
            all_metrics[name] = metrics
            atomic.write_text(per_image_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.6f"))
            run_id = checkpoint["extra"].get("mlflow_run_id")
            parent = parent or run_id
            if run_id:  # the test metrics also land in the model's own training run, for side-by-side views
                with tracking.start_run(name, {}, run_id=run_id):
                    tracking.log_flat("test_", metrics)
        atomic.write_json(args.metrics, all_metrics)
        with tracking.start_run("evaluate", run_tags("evaluate"), parent_run_id=parent):
            mlflow.log_params(
                {
                    "test_images": len(test),
                    "val_images": len(val),
                    "image_size": test.size,
                    "tta": tta,
                    "keep_largest": postprocess.keep_largest,
                    "fill_holes": postprocess.fill_holes,
                }
            )
            for name, metrics in all_metrics.items():
                tracking.log_flat(f"{name}.", metrics)
            mlflow.log_artifact(str(args.metrics))
            mlflow.log_artifacts(str(per_image_dir), "per_image")


if __name__ == "__main__":
    main(run)
