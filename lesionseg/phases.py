"""One training phase (frozen, or a fine-tuning level) as one MLflow run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow

from lesionseg import tracking
from lesionseg.cache import Split
from lesionseg.model import LesionSegModel, ModelConfig, count_parameters, level_name
from lesionseg.train import TrainConfig, TrainResult, train_model

LOGGED_TRAIN_FIELDS = (
    "epochs", "lr", "batch_size", "optimizer", "weight_decay", "scheduler", "warmup_epochs",
    "bce_weight", "dice_weight", "ema_decay", "seed", "device", "amp", "augment_on", "channels_last",
)  # fmt: skip


def phase_params(model: LesionSegModel, model_config: ModelConfig, config: TrainConfig, image_size: int) -> dict:
    """The MLflow params of a phase: unfreeze level, model, data size, training and augmentation settings."""
    params = {
        "unfreeze": level_name(model.unfreeze_level),
        "encoder_weights": model_config.encoder_weights,
        "decoder_dilation": model_config.decoder_dilation,
        "image_size": image_size,
    }
    params.update({name: getattr(config, name) for name in LOGGED_TRAIN_FIELDS})
    params.update({f"augment_{k}": v for k, v in asdict(config.augment).items()})
    return params


def train_phase(
    name: str,
    model: LesionSegModel,
    model_config: ModelConfig,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    checkpoint_path: Path,
    history_path: Path,
    tags: dict,
    parent_run_id: str | None = None,
) -> TrainResult:
    """Train ``model`` at its unfreeze level inside an MLflow run named ``name``.

    Logs the params, parameter counts, per-epoch history (epoch as step), best
    validation metrics, the history CSV and the checkpoint; the checkpoint
    records the run id (``extra.mlflow_run_id``) so later stages can add to it.
    """
    tags = {**tags, "lesionseg.unfreeze": level_name(model.unfreeze_level)}
    with tracking.start_run(name, tags, parent_run_id=parent_run_id) as run:
        mlflow.log_params(phase_params(model, model_config, config, train_split.size))
        tracking.log_flat("params_", count_parameters(model))
        result = train_model(
            model,
            model_config,
            train_split,
            val_split,
            config,
            checkpoint_path,
            history_path,
            on_epoch=lambda row: tracking.log_flat("", row, step=int(row["epoch"])),
            checkpoint_extra={"mlflow_run_id": run.info.run_id, "parent_run_id": parent_run_id},
        )
        tracking.log_flat("best_val_", result.best_metrics)
        mlflow.log_artifact(str(history_path))
        mlflow.log_artifact(str(checkpoint_path), "checkpoint")
    return result
