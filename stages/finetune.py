"""Stage finetune: from the frozen checkpoint, unfreeze encoder stages, one model per level."""

import argparse
import contextlib
from pathlib import Path

import mlflow

from lesionseg import atomic, tracking
from lesionseg.cache import Split
from lesionseg.checkpoint import load_model
from lesionseg.errors import DataError
from lesionseg.model import ModelConfig, count_parameters, level_name
from lesionseg.train import train_model
from stages.common import get, load_params, main, mlflow_setup, run_tags, unfreeze_levels
from stages.train import _phase_params, train_config


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True, help="checkpoint of the train stage")
    parser.add_argument("--models", type=Path, required=True, help="output folder of fine-tuned checkpoints")
    parser.add_argument("--histories", type=Path, required=True, help="output folder of histories")
    args = parser.parse_args()
    params = load_params()
    levels = unfreeze_levels(get(params, "finetune.unfreeze"))
    config = train_config(params, "finetune")
    train_split, val_split = Split.load(args.data / "train.pt"), Split.load(args.data / "val.pt")
    mlflow_setup(params)

    with contextlib.ExitStack() as stack:
        models_dir = stack.enter_context(atomic.atomic_dir(args.models))
        histories_dir = stack.enter_context(atomic.atomic_dir(args.histories))
        for level in levels:
            name = f"finetune_{level_name(level)}"
            model, frozen = load_model(args.frozen, unfreeze=level)
            if frozen["unfreeze"] != "0":
                raise DataError(
                    args.frozen, f"expected the frozen-encoder (level 0) checkpoint, got level {frozen['unfreeze']}"
                )
            model_config = ModelConfig(**frozen["model_config"])
            parent = frozen["extra"].get("mlflow_run_id")
            tags = {**run_tags(name), "lesionseg.unfreeze": level_name(level)}
            with tracking.start_run(name, tags, parent_run_id=parent) as run:
                mlflow.log_params(
                    {
                        "unfreeze": level_name(level),
                        "image_size": train_split.size,
                        "encoder_weights": model_config.encoder_weights,
                        "decoder_dilation": model_config.decoder_dilation,
                        **_phase_params(config),
                    }
                )
                tracking.log_flat("params_", count_parameters(model))
                history_path = histories_dir / f"{name}.csv"
                result = train_model(
                    model,
                    model_config,
                    train_split,
                    val_split,
                    config,
                    models_dir / f"{name}.pt",
                    history_path,
                    on_epoch=lambda row: tracking.log_flat("", row, step=int(row["epoch"])),
                    checkpoint_extra={"mlflow_run_id": run.info.run_id, "parent_run_id": parent},
                )
                tracking.log_flat("best_val_", result.best_metrics)
                mlflow.log_artifact(str(history_path))
                mlflow.log_artifact(str(models_dir / f"{name}.pt"), "checkpoint")


if __name__ == "__main__":
    main(run)
