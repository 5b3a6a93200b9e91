"""Stage train: the decoder with the encoder frozen (unfreeze level 0)."""

import argparse
from pathlib import Path

import mlflow

from lesionseg import tracking
from lesionseg.cache import Split
from lesionseg.dataset import AugmentConfig
from lesionseg.encoder import IMAGENET_WEIGHTS, NO_WEIGHTS
from lesionseg.model import ModelConfig, build_model, count_parameters
from lesionseg.train import TrainConfig, train_model
from stages.common import ParamError, build, get, load_params, local_path, main, mlflow_setup, run_tags

RUNTIME_KEYS = ("device", "num_workers", "amp")


def train_config(params: dict, section: str) -> TrainConfig:
    """A phase's TrainConfig: its own section plus the shared ``runtime`` and ``augment`` sections."""
    runtime = {key: get(params, f"runtime.{key}") for key in RUNTIME_KEYS}
    augment = build(AugmentConfig, params, "augment")
    return build(TrainConfig, params, section, skip=("progress",), augment=augment, **runtime)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    weights = get(params, "train.encoder_weights")
    if not isinstance(weights, str):
        raise ParamError(f"params.yaml: train.encoder_weights must be imagenet, none or a path, got {weights!r}")
    if weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS):
        weights = local_path(weights)
    model_config = build(ModelConfig, params, "model", encoder_weights=weights)
    config = train_config(params, "train")
    train_split, val_split = Split.load(args.data / "train.pt"), Split.load(args.data / "val.pt")

    mlflow_setup(params)
    model = build_model(model_config, unfreeze=0)
    with tracking.start_run("frozen", {**run_tags("frozen"), "lesionseg.unfreeze": "0"}) as run:
        mlflow.log_params(
            {
                "unfreeze": 0,
                "encoder_weights": weights,
                "image_size": train_split.size,
                "decoder_dilation": model_config.decoder_dilation,
                **_phase_params(config),
            }
        )
        tracking.log_flat("params_", count_parameters(model))
        result = train_model(
            model,
            model_config,
            train_split,
            val_split,
            config,
            args.checkpoint,
            args.history,
            on_epoch=lambda row: tracking.log_flat("", row, step=int(row["epoch"])),
            checkpoint_extra={"mlflow_run_id": run.info.run_id},
        )
        tracking.log_flat("best_val_", result.best_metrics)
        mlflow.log_artifact(str(args.history))
        mlflow.log_artifact(str(args.checkpoint), "checkpoint")


def _phase_params(config: TrainConfig) -> dict:
    fields = (
        "epochs",
        "lr",
        "batch_size",
        "optimizer",
        "weight_decay",
        "scheduler",
        "warmup_epochs",
        "bce_weight",
        "dice_weight",
        "seed",
        "device",
        "amp",
    )
    params = {name: getattr(config, name) for name in fields}
    params.update({f"augment_{k}": v for k, v in vars(config.augment).items()})
    return params


if __name__ == "__main__":
    main(run)
