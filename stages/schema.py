"""params.yaml's sections as pydantic models: an unknown, missing or mistyped key fails naming its dotted key.

Types are strict (a string where a number belongs fails; an int is a float); ranges and choices are checked by
the library's config dataclasses, which the stages build from these sections.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, create_model


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Download(Section):
    source: str
    cache: str
    retries: int
    max_extract_gb: float


class Data(Section):
    size: int
    val_fraction: float
    seed: int
    expected_train: int | None
    expected_test: int | None
    workers: int


class Model(Section):
    decoder_dilation: int
    colour_constancy: str
    minkowski_p: float


class Augment(Section):
    hflip: float
    vflip: float
    brightness_contrast: float
    scale_rotate: float
    rotate_limit: int
    scale_limit: float
    hue_saturation: float
    gamma: float
    blur: float
    noise: float
    jpeg: float
    lesion_crop: float


def _auto_or_bool(value):
    if value != "auto" and not isinstance(value, bool):
        raise ValueError("must be auto, true or false")
    return value


class Runtime(Section):
    device: str
    num_workers: int
    amp: str
    tf32: bool
    augment_on: str
    channels_last: Annotated[str | bool, PlainValidator(_auto_or_bool)]
    compile: str
    fused_optimizer: str
    nproc_per_node: int


class Phase(Section):
    """The keys of a training phase: ``train`` sets them all, ``finetune`` those where it differs."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    weight_decay: float
    scheduler: str
    warmup_epochs: int
    bce_weight: float
    dice_weight: float
    ema_decay: float
    seed: int


class Train(Phase):
    encoder_weights: str


# ``unfreeze`` (checked by stages.configs.unfreeze_levels) and any key of Phase, each optional: unset = train's.
Finetune = create_model(
    "Finetune",
    __base__=Section,
    unfreeze=(Any, ...),
    **{name: (field.annotation, None) for name, field in Phase.model_fields.items()},
)


class Cv(Section):
    folds: int
    seed: int
    fold_stages: list[int]


class Zoom(Section):
    enabled: bool
    margin: float
    max_share: float


class Evaluate(Section):
    batch_size: int
    tta: bool
    keep_largest: bool
    fill_holes: bool
    zoom: Zoom
    external: Any  # free-form (name -> folder): checked by stages.external_sets
    calibrate: Any  # free-form (name -> image count): checked by stages.evaluate
    calibrate_seed: int
    mask_suffix: str | None
    review_fraction: float


class Report(Section):
    model: str
    samples: int


class Export(Section):
    model: str


class Mlflow(Section):
    tracking_uri: str
    experiment: str


SECTIONS: dict[str, type[Section]] = {
    "download": Download,
    "data": Data,
    "model": Model,
    "augment": Augment,
    "runtime": Runtime,
    "train": Train,
    "finetune": Finetune,
    "cv": Cv,
    "evaluate": Evaluate,
    "report": Report,
    "export": Export,
    "mlflow": Mlflow,
}
