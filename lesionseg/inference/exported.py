"""An exported model: a checkpoint (or an ensemble's members) with the inference settings it was evaluated with.

The export stage writes it as ``models/model.pt``: the checkpoint dict plus ``inference`` (the settings in their
stored form, :meth:`~lesionseg.inference.settings.InferenceSettings.record`); an exported ensemble holds its members'
checkpoints under ``members`` instead of one ``state_dict``.
"""

from __future__ import annotations

from pathlib import Path

from lesionseg import __version__
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import FORMAT, check_same_preprocessing, read_checkpoint


def package_model(paths: list[Path], settings: InferenceSettings) -> dict:
    """The exported model: the checkpoint at ``paths`` (several: an ensemble of them) with ``settings``."""
    paths = [Path(p) for p in paths]
    members = [read_checkpoint(p) for p in paths]
    check_same_preprocessing(paths, members)
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
    return InferenceSettings.from_record(checkpoint["inference"]) if "inference" in checkpoint else InferenceSettings()


def has_inference_settings(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` stores the inference settings it was evaluated with (an exported model)."""
    return "inference" in checkpoint
