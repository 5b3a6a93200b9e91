"""The inference settings of the ``evaluate`` params: the one builder every stage that runs a model uses."""

from __future__ import annotations

from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
from stages.params import build, section


def inference_settings(params: dict, review_threshold: float | None = None) -> InferenceSettings:
    """``evaluate.tta``, ``evaluate.keep_largest``, ``evaluate.fill_holes`` and ``evaluate.zoom.*`` as
    :class:`~lesionseg.inference.settings.InferenceSettings` (threshold 0.5: the pipeline scores at the ISIC
    definition's), with ``review_threshold`` (chosen by the evaluate stage, or none)."""
    evaluate = section(params, "evaluate")
    return InferenceSettings(
        tta=evaluate.tta,
        postprocess=PostprocessConfig(keep_largest=evaluate.keep_largest, fill_holes=evaluate.fill_holes),
        zoom=build(ZoomConfig, "evaluate.zoom", evaluate.zoom.model_dump()),
        review_threshold=review_threshold,
    )
