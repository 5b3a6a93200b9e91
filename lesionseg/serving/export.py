"""Export a checkpoint to ONNX, and wrap it as an MLflow pyfunc model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch

from lesionseg import atomic
from lesionseg.inference.exported import stored_settings
from lesionseg.inference.predict import Prediction, predict
from lesionseg.inference.settings import OVERRIDABLE, InferenceSettings
from lesionseg.model.checkpoint import first_member, load_model, load_models

__all__ = ["export_onnx", "LesionSegPyfunc", "log_pyfunc_model"]

_ONNX_OPSET = 17


def export_onnx(checkpoint_paths: Path | list[Path], onnx_path: Path, metadata: dict[str, str] | None = None) -> dict:
    """Write an ONNX model: input ``image`` float32 ``(batch, 3, S, S)`` ImageNet-normalised,
    output ``logits`` ``(batch, 1, S, S)``; batch is dynamic. Several checkpoints (or an
    exported ensemble) become one graph whose logits are those of the mean probability.
    The model's metadata holds the preprocessing (``lesionseg.preprocessing``) and the
    inference settings to apply around it (``lesionseg.inference``: flip TTA, threshold,
    clean-up, zoom, review threshold; :meth:`~lesionseg.inference.settings.InferenceSettings.record`); the
    colour constancy
    step (``lesionseg.colour_constancy``) is inside the graph; ``metadata`` adds entries (the export stage:
    ``lesionseg.model_card``). Returns the preprocessing dict."""
    paths = checkpoint_paths if isinstance(checkpoint_paths, (list, tuple)) else [checkpoint_paths]
    model, checkpoint = load_models(paths)
    model.eval()
    size = checkpoint["preprocessing"]["size"]
    example = torch.zeros(1, 3, size, size)
    with atomic.atomic_path(Path(onnx_path)) as tmp, warnings.catch_warnings():
        # The tracer warns about the decoder's size check; the size is fixed per export.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=_ONNX_OPSET,
            dynamo=False,
        )
        settings = stored_settings(checkpoint).record()
        model_config = first_member(checkpoint)["model_config"]
        _add_metadata(
            tmp,
            {
                "lesionseg.preprocessing": json.dumps(checkpoint["preprocessing"]),
                "lesionseg.inference": json.dumps(settings),
                # Informational: the colour constancy step is part of the graph, not for the caller to apply.
                "lesionseg.colour_constancy": json.dumps(
                    {
                        k: model_config.get(k, default)
                        for k, default in (("colour_constancy", "none"), ("minkowski_p", 6.0))
                    }
                ),
                # A model calibrated to a clinic (lesionseg calibrate): on what its settings were chosen.
                **(
                    {"lesionseg.calibration": json.dumps(checkpoint["calibration"])}
                    if "calibration" in checkpoint
                    else {}
                ),
                **(metadata or {}),
            },
        )
    return checkpoint["preprocessing"]


def _add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx  # optional dependency: pip install lesionseg[onnx]

    proto = onnx.load(str(path))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _predict_probabilities(model: torch.nn.Module, images: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> lesion probabilities float32 ``(N, S, S)`` with ``settings``' TTA and zoom-in
    second pass (no threshold or clean-up)."""
    logits = _predict(model, images, settings).input_logits
    return torch.sigmoid(logits)[:, 0].numpy().astype(np.float32)


def _predict_masks(model: torch.nn.Module, images: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> uint8 masks ``(N, S, S)`` (1 = lesion) with all of ``settings`` applied."""
    return _masks(_predict(model, images, settings))


def _predict_masks_with_quality(
    model: torch.nn.Module, images: np.ndarray, settings: InferenceSettings
) -> dict[str, np.ndarray]:
    """uint8 ``(N, S, S, 3)`` -> ``{"mask": uint8 (N, S, S), "quality": float32 (N,), "review": bool (N,)}``:
    :func:`_predict_masks`, each mask's :func:`~lesionseg.inference.quality.mask_quality` and whether it is below
    ``settings.review_threshold`` (all False without one)."""
    prediction = _predict(model, images, settings)
    return {"mask": _masks(prediction), "quality": prediction.quality.astype(np.float32), "review": prediction.review}


def _predict(model: torch.nn.Module, images: np.ndarray, settings: InferenceSettings) -> Prediction:
    return predict(model, torch.as_tensor(np.asarray(images), dtype=torch.uint8), settings)


def _masks(prediction: Prediction) -> np.ndarray:
    return prediction.input_masks()[:, 0].numpy().astype(np.uint8)


class LesionSegPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: uint8 images ``(N, S, S, 3)`` -> uint8 lesion masks ``(N, S, S)`` (0/1), ``S`` the input size.

    The model's stored inference settings apply; params override ``tta``, ``threshold``, ``keep_largest``,
    ``fill_holes``, ``zoom`` and ``review_threshold`` per call. ``output="probabilities"``: float32 probabilities
    (TTA and zoom applied, no threshold or clean-up); ``output="mask_quality"``: a dict of the masks, each mask's
    ``quality`` ``(N,)`` and ``review`` flag. MLflow pickles the wrapper, which holds no weights: the model is rebuilt
    from the checkpoint artifact in :meth:`load_context`.
    """

    def load_context(self, context):
        self.model, checkpoint = load_model(Path(context.artifacts["checkpoint"]))
        self.model.eval()
        self.settings = stored_settings(checkpoint)

    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        output = params.pop("output", "mask")
        settings = self.settings.override({k: v for k, v in params.items() if k in OVERRIDABLE})
        if output == "probabilities":
            return _predict_probabilities(self.model, model_input, settings)
        if output == "mask_quality":
            return _predict_masks_with_quality(self.model, model_input, settings)
        if output != "mask":
            raise ValueError(f"output must be 'mask', 'mask_quality' or 'probabilities', got {output!r}")
        return _predict_masks(self.model, model_input, settings)


def log_pyfunc_model(checkpoint_path: Path, documents: list[Path] = (), name: str = "model") -> str:
    """Log ``checkpoint_path`` (a checkpoint or an exported model, see
    :func:`lesionseg.inference.exported.package_model`) as a pyfunc model in the active run,
    with signature (its params: the inference settings) and input example; ``documents`` (e.g. the model
    card) travel with it as artifacts named by their file names.

    Returns the model URI for ``mlflow.pyfunc.load_model``.
    """
    model, checkpoint = load_model(checkpoint_path)
    size = checkpoint["preprocessing"]["size"]
    example = np.zeros((1, size, size, 3), dtype=np.uint8)
    settings = stored_settings(checkpoint)
    # A param's default must have a type: review_threshold is a param only where the model stores one.
    stored = {k: v for k, v in settings.record().items() if k in OVERRIDABLE}
    defaults = {"output": "mask", **{k: v for k, v in stored.items() if v is not None}}
    signature = mlflow.models.infer_signature(example, _predict_masks(model.eval(), example, settings), defaults)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=LesionSegPyfunc(),
        artifacts={"checkpoint": str(checkpoint_path), **{Path(d).name: str(d) for d in documents}},
        signature=signature,
        input_example=example,
        pip_requirements=_requirements(),
    )
    return info.model_uri


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "numpy", "mlflow", "lesionseg")]
