"""The inference settings of the ``evaluate`` params: the one builder every stage that runs a model uses."""

from __future__ import annotations

from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
from stages.params import ParamError, build, get


def inference_settings(params: dict, review_threshold: float | None = None) -> InferenceSettings:
    """``evaluate.tta``, ``evaluate.keep_largest``, ``evaluate.fill_holes`` and ``evaluate.zoom.*`` as
    :class:`~lesionseg.inference.settings.InferenceSettings` (threshold 0.5: the pipeline scores at the ISIC
    definition's), with ``review_threshold`` (chosen by the evaluate stage, or none)."""
    tta = get(params, "evaluate.tta")
    if type(tta) is not bool:
        raise ParamError(f"params.yaml: evaluate.tta must be true or false, got {tta!r}")
    return InferenceSettings(
        tta=tta,
        postprocess=build(PostprocessConfig, params, "evaluate"),
        zoom=build(ZoomConfig, params, "evaluate.zoom"),
        review_threshold=review_threshold,
    )
