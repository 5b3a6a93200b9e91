"""Export a checkpoint to ONNX, and wrap it as an MLflow pyfunc model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch

from lesionseg import atomic
from lesionseg.checkpoint import load_model
from lesionseg.dataset import normalize_batch

ONNX_OPSET = 17


def export_onnx(checkpoint_path: Path, onnx_path: Path) -> dict:
    """Write an ONNX model: input ``image`` float32 ``(batch, 3, S, S)`` ImageNet-normalised,
    output ``logits`` ``(batch, 1, S, S)``; batch is dynamic. The preprocessing is stored
    in the model's metadata (``lesionseg.preprocessing``). Returns that preprocessing dict."""
    model, checkpoint = load_model(checkpoint_path)
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
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        _add_metadata(tmp, {"lesionseg.preprocessing": json.dumps(checkpoint["preprocessing"])})
    return checkpoint["preprocessing"]


def _add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx  # optional dependency: pip install lesionseg[onnx]

    proto = onnx.load(str(path))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> lesion probabilities float32 ``(N, S, S)`` (model in eval mode)."""
    batch = normalize_batch(torch.as_tensor(np.asarray(images), dtype=torch.uint8))
    return torch.sigmoid(model(batch))[:, 0].numpy().astype(np.float32)


class LesionSegPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: uint8 images ``(N, S, S, 3)`` -> lesion probabilities float32 ``(N, S, S)``.

    ``S`` is the checkpoint's input size; threshold at 0.5 for masks. The
    wrapper itself holds no weights: MLflow pickles it, and the model is
    rebuilt from the checkpoint artifact in :meth:`load_context`.
    """

    def load_context(self, context):
        self.model, _ = load_model(Path(context.artifacts["checkpoint"]))
        self.model.eval()

    def predict(self, context, model_input, params=None):
        return predict_probabilities(self.model, model_input)


def log_pyfunc_model(checkpoint_path: Path, name: str = "model") -> str:
    """Log ``checkpoint_path`` as a pyfunc model in the active run, with signature and input example.

    Returns the model URI for ``mlflow.pyfunc.load_model``.
    """
    model, checkpoint = load_model(checkpoint_path)
    size = checkpoint["preprocessing"]["size"]
    example = np.zeros((1, size, size, 3), dtype=np.uint8)
    signature = mlflow.models.infer_signature(example, predict_probabilities(model.eval(), example))
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=LesionSegPyfunc(),
        artifacts={"checkpoint": str(checkpoint_path)},
        signature=signature,
        input_example=example,
        pip_requirements=_requirements(),
    )
    return info.model_uri


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "torchvision", "numpy", "mlflow", "lesionseg")]
