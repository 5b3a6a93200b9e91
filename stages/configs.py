"""The training stages' typed configs (train, finetune, cv_train): model, phases, unfreeze levels."""

from __future__ import annotations

from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.model.encoder import IMAGENET_WEIGHTS, NO_WEIGHTS
from lesionseg.model.model import ModelConfig, parse_unfreeze_level
from lesionseg.training.train import TrainConfig
from stages.params import ParamError, build, local_path, section


def train_config(params: dict, name: str) -> TrainConfig:
    """A phase's TrainConfig (``train`` or ``finetune``) with ``runtime`` and ``augment``. ``finetune`` states
    only the keys where it differs from ``train``; every other key is ``train``'s."""
    values = section(params, "train").model_dump(exclude={"encoder_weights"})
    owners = dict.fromkeys(values, "train")  # the section each key comes from, for error messages
    if name == "finetune":
        own = section(params, "finetune").model_dump(exclude_unset=True, exclude={"unfreeze"})
        values.update(own)
        owners.update(dict.fromkeys(own, "finetune"))
    runtime = section(params, "runtime").model_dump(exclude={"nproc_per_node"})
    owners.update(dict.fromkeys(runtime, "runtime"))
    augment = build(AugmentConfig, "augment", section(params, "augment").model_dump())
    try:
        return TrainConfig(**values, augment=augment, **runtime)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {owners.get(str(exc).split()[0], name)}.{exc}") from exc


def model_config(params: dict) -> ModelConfig:
    """``model`` plus ``train.encoder_weights`` (a local path made absolute against the repository root)."""
    weights = section(params, "train").encoder_weights
    if weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS):
        weights = local_path(weights)
    return build(ModelConfig, "model", section(params, "model").model_dump(), encoder_weights=weights)


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
