"""Checkpoints: plain dicts of state dicts plus config, never pickled modules.

Keys: ``format``, ``lesionseg_version``, ``model_config`` (see
:class:`~lesionseg.model.model.ModelConfig`), ``unfreeze`` (level name), ``state_dict``,
``preprocessing`` (``size``, ``mean``, ``std``), ``epoch``, ``metrics`` (validation
metrics of that epoch), ``param_counts``, ``numerics`` (the precision and memory layout
the training step used, and the ``runtime.amp``/``channels_last`` requests; empty in a
checkpoint no training loop made, or one from before they were recorded) and ``extra`` (caller metadata, e.g.
the MLflow run id). Loaded with ``weights_only=True``.

An exported model (:func:`package_model`, written by the export stage as
``models/model.pt``) is the same dict plus ``inference`` (the settings it was
evaluated with, in their stored form: :meth:`~lesionseg.model.settings.InferenceSettings.record`); an
exported ensemble holds its members' checkpoints under ``members`` instead of
one ``state_dict``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from lesionseg import __version__, atomic
from lesionseg.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from lesionseg.errors import DataError, unreadable_torch_file
from lesionseg.model.encoder import NO_WEIGHTS
from lesionseg.model.ensemble import EnsembleModel
from lesionseg.model.model import LesionSegModel, ModelConfig, build_model, count_parameters, level_name
from lesionseg.model.settings import InferenceSettings

FORMAT = "lesionseg-checkpoint-v1"


def make_checkpoint(
    model: LesionSegModel,
    config: ModelConfig,
    size: int,
    epoch: int,
    metrics: dict,
    extra=None,
    *,
    numerics: dict | None = None,
) -> dict:
    """``numerics``: the precision and layout of the training step that made the weights
    (:meth:`~lesionseg.model.inference.Numerics.record`; the training loop always passes it)."""
    return {
        "format": FORMAT,
        "lesionseg_version": __version__,
        "model_config": asdict(config),
        "unfreeze": level_name(model.unfreeze_level),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": {"size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "epoch": epoch,
        "metrics": dict(metrics),
        "param_counts": count_parameters(model),
        "numerics": dict(numerics or {}),
        "extra": dict(extra or {}),
    }


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write atomically: a crash leaves the previous file or none."""
    atomic.torch_save(checkpoint, path)


def first_member(package: dict) -> dict:
    """The checkpoint of one model, or an ensemble package's first member: what describes the architecture,
    level and training of the model (an ensemble's members share them, :func:`package_model` checks)."""
    return package["members"][0] if "members" in package else package


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict, validated (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"not a lesionseg checkpoint: {unreadable_torch_file(path, exc)}") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise DataError(path, f"not a lesionseg checkpoint (expected format {FORMAT!r})")
    return checkpoint


def load_model(path: Path, unfreeze: int | str | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint (no weight download) and load its state.

    The model is at the checkpoint's unfreeze level unless ``unfreeze`` is given;
    an exported ensemble comes back as an :class:`~lesionseg.model.ensemble.EnsembleModel`.
    Raises :class:`DataError` naming the file when the state does not fit the architecture.
    """
    checkpoint = read_checkpoint(path)
    if "members" in checkpoint:
        return EnsembleModel([_build(member, path, None) for member in checkpoint["members"]]), checkpoint
    return _build(checkpoint, path, unfreeze), checkpoint


def _build(checkpoint: dict, path: Path, unfreeze) -> LesionSegModel:
    config = ModelConfig(**{**checkpoint["model_config"], "encoder_weights": NO_WEIGHTS})
    model = build_model(config, checkpoint["unfreeze"] if unfreeze is None else unfreeze)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise DataError(path, f"checkpoint does not fit the lesionseg architecture: {exc}") from exc
    return model


def load_models(paths: list[Path]) -> tuple[torch.nn.Module, dict]:
    """One checkpoint: :func:`load_model`. Several: their ensemble (mean probability), with the
    first checkpoint's dict; they must share the input size."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return load_model(paths[0])
    loaded = [load_model(p) for p in paths]
    _same_preprocessing(paths, [checkpoint for _, checkpoint in loaded])
    return EnsembleModel([model for model, _ in loaded]), loaded[0][1]


def _same_preprocessing(paths, checkpoints) -> None:
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        if checkpoint["preprocessing"] != checkpoints[0]["preprocessing"]:
            raise DataError(path, f"preprocessing differs from {paths[0]}'s; an ensemble needs one input size")


def package_model(paths: list[Path], settings: InferenceSettings) -> dict:
    """The exported model: the checkpoint at ``paths`` (several: an ensemble of them) with ``settings``."""
    paths = [Path(p) for p in paths]
    members = [read_checkpoint(p) for p in paths]
    _same_preprocessing(paths, members)
    if len(members) == 1:
        return with_settings(members[0], settings)
    package = {
        "format": FORMAT,
        "lesionseg_version": __version__,
        "members": members,
        "preprocessing": members[0]["preprocessing"],
        "extra": {"member_files": [str(p) for p in paths]},
    }
    return with_settings(package, settings)


def with_settings(checkpoint: dict, settings: InferenceSettings) -> dict:
    """``checkpoint`` (a model's dict, or an exported ensemble's) storing ``settings`` as its ``inference``: the
    one place settings are written into a model (:func:`stored_settings` reads them)."""
    return {**checkpoint, "inference": settings.record()}


def stored_settings(checkpoint: dict) -> InferenceSettings:
    """The settings stored with an exported model; the plain model's (:class:`InferenceSettings` defaults) for a
    training checkpoint, which stores none (:func:`has_inference_settings`)."""
    return InferenceSettings.from_record(checkpoint.get("inference", {}))


def has_inference_settings(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` stores the inference settings it was evaluated with (an exported model)."""
    return "inference" in checkpoint
