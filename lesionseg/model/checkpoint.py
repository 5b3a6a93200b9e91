"""Checkpoints: plain dicts of state dicts plus config, never pickled modules; loaded with ``weights_only=True``.

Keys: ``format``, ``lesionseg_version``, ``model_config`` (:class:`~lesionseg.model.model.ModelConfig` as a dict),
``unfreeze`` (level name), ``state_dict``, ``preprocessing`` (``size``, ``mean``, ``std``), ``epoch``, ``metrics``
(that epoch's validation metrics), ``param_counts``, ``numerics`` (the training step's precision and memory layout,
:meth:`~lesionseg.runtime.Numerics.record`; empty where no training loop made it) and ``extra`` (caller metadata,
e.g. the MLflow run id). An exported model adds its settings (:mod:`lesionseg.inference.exported`).
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
    (:meth:`~lesionseg.runtime.Numerics.record`; the training loop always passes it)."""
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
    check_same_preprocessing(paths, [checkpoint for _, checkpoint in loaded])
    return EnsembleModel([model for model, _ in loaded]), loaded[0][1]


def check_same_preprocessing(paths, checkpoints) -> None:
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        if checkpoint["preprocessing"] != checkpoints[0]["preprocessing"]:
            raise DataError(path, f"preprocessing differs from {paths[0]}'s; an ensemble needs one input size")
