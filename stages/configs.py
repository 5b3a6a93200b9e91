"""The training stages' typed configs (train, finetune, cv_train): model, phases, unfreeze levels."""

from __future__ import annotations

from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.model.encoder import IMAGENET_WEIGHTS, NO_WEIGHTS
from lesionseg.model.model import ModelConfig, parse_unfreeze_level
from lesionseg.training.train import TrainConfig
from stages.params import ParamError, build, get, local_path

RUNTIME_KEYS = ("device", "num_workers", "amp", "tf32", "augment_on", "channels_last", "compile", "fused_optimizer")


def train_config(params: dict, section: str) -> TrainConfig:
    """A phase's TrainConfig (``train`` or ``finetune``): its own section plus ``runtime`` and ``augment``."""
    runtime = {key: get(params, f"runtime.{key}") for key in RUNTIME_KEYS}
    augment = build(AugmentConfig, params, "augment")
    return build(TrainConfig, params, section, skip=("progress",), augment=augment, **runtime)


def model_config(params: dict) -> ModelConfig:
    """``model`` plus ``train.encoder_weights`` (a local path made absolute against the repository root)."""
    weights = get(params, "train.encoder_weights")
    if not isinstance(weights, str):
        raise ParamError(f"params.yaml: train.encoder_weights must be imagenet, none or a path, got {weights!r}")
    if weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS):
        weights = local_path(weights)
    return build(ModelConfig, params, "model", encoder_weights=weights)


def unfreeze_levels(value) -> list[int]:
    """``finetune.unfreeze``: one level or a list of levels (1, 2, 3, all)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ParamError("params.yaml: finetune.unfreeze must name at least one level")
    try:
        levels = [parse_unfreeze_level(v) for v in values]
    except ValueError as exc:
        raise ParamError(f"params.yaml: finetune.unfreeze: {exc}") from exc
    if 0 in levels:
        raise ParamError(
            "params.yaml: finetune.unfreeze: level 0 is the frozen phase (the train stage); use 1, 2, 3 or all"
        )
    return sorted(set(levels))
