"""Checkpoints: plain dicts of state dicts plus config, never pickled modules.

Keys: ``format``, ``lesionseg_version``, ``model_config`` (see
:class:`~lesionseg.model.ModelConfig`), ``unfreeze`` (level name), ``state_dict``,
``preprocessing`` (``size``, ``mean``, ``std``), ``epoch``, ``metrics`` (validation
metrics of that epoch), ``param_counts`` and ``extra`` (caller metadata, e.g.
the MLflow run id). Loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from lesionseg import __version__, atomic
from lesionseg.dataset import IMAGENET_MEAN, IMAGENET_STD
from lesionseg.encoder import NO_WEIGHTS
from lesionseg.errors import DataError
from lesionseg.model import LesionSegModel, ModelConfig, build_model, count_parameters, level_name

FORMAT = "lesionseg-checkpoint-v1"


def make_checkpoint(
    model: LesionSegModel, config: ModelConfig, size: int, epoch: int, metrics: dict, extra=None
) -> dict:
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
        "extra": dict(extra or {}),
    }


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write atomically: a crash leaves the previous file or none."""
    atomic.torch_save(checkpoint, path)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict, validated (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"not a readable lesionseg checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise DataError(path, f"not a lesionseg checkpoint (expected format {FORMAT!r})")
    return checkpoint


def load_model(path: Path, unfreeze: int | str | None = None) -> tuple[LesionSegModel, dict]:
    """Rebuild the model from a checkpoint (no weight download) and load its state.

    The model is at the checkpoint's unfreeze level unless ``unfreeze`` is given.
    Raises :class:`DataError` naming the file when the state does not fit the architecture.
    """
    checkpoint = read_checkpoint(path)
    config = ModelConfig(**{**checkpoint["model_config"], "encoder_weights": NO_WEIGHTS})
    model = build_model(config, checkpoint["unfreeze"] if unfreeze is None else unfreeze)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise DataError(path, f"checkpoint does not fit the lesionseg architecture: {exc}") from exc
    return model, checkpoint
