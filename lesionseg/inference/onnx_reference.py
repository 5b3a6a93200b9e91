"""Run an exported ONNX model without torch: the reference for what ``lesionseg predict`` does around the graph.

:class:`OnnxModel` reads the preprocessing and inference settings from the model's metadata and does, with
numpy, Pillow, SciPy and onnxruntime only, what :func:`lesionseg.inference.predict.predict` and
:meth:`~lesionseg.inference.predict.Prediction.mask` do: decode and resize, flip TTA, the zoom-in second pass,
quality and review flag, the mask at the original size. The procedure step by step: docs/predict.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lesionseg.data.images import image_size, model_input, resize_input
from lesionseg.errors import DataError
from lesionseg.inference.boxes import Box, box_at, zoom_box
from lesionseg.inference.postprocess import clean_mask
from lesionseg.inference.quality import UNCERTAIN_MARGIN, needs_review
from lesionseg.inference.settings import InferenceSettings

_METADATA_KEYS = ("lesionseg.preprocessing", "lesionseg.inference")
_FLIPS = ((), (-1,), (-2,), (-2, -1))  # identity, horizontal, vertical, both: the order of predict_logits


@dataclass(frozen=True)
class OnnxPrediction:
    """``mask``: bool ``(H, W)`` at the image's original size; ``quality``: :func:`mask_quality`;
    ``review``: quality below the stored review threshold (False when the model stores none)."""

    mask: np.ndarray
    quality: float
    review: bool


class OnnxModel:
    """An exported ``model.onnx`` with its stored preprocessing and inference settings."""

    def __init__(self, onnx_path: Path):
        import onnxruntime  # optional dependency: pip install lesionseg[onnx]

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise DataError(self.path, "file not found")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise DataError(self.path, f"not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in _METADATA_KEYS if key not in meta]
        if missing:
            raise DataError(self.path, f"no {', '.join(missing)} metadata: not a model written by lesionseg export")
        try:
            preprocessing = json.loads(meta["lesionseg.preprocessing"])
            self.size = int(preprocessing["size"])
            self.mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
            self.std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(1, 3, 1, 1)
            self.settings = InferenceSettings.from_record(json.loads(meta["lesionseg.inference"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(self.path, f"unusable lesionseg metadata ({type(exc).__name__}: {exc})") from exc

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Logits float32 ``(S, S)`` of one ``(S, S, 3)`` model input (uint8, or float in [0, 255] for a zoom
        crop), flip-averaged with TTA."""
        x = (pixels.astype(np.float32).transpose(2, 0, 1)[None] / 255.0 - self.mean) / self.std
        flips = _FLIPS if self.settings.tta else _FLIPS[:1]
        batch = np.concatenate([np.flip(x, axis) for axis in flips]).astype(np.float32)
        (out,) = self.session.run(["logits"], {"image": batch})
        total = np.zeros(out.shape[1:], dtype=np.float32)
        for member, axis in zip(out, flips):  # flipped back, summed in predict_logits' order
            total += np.flip(member, axis)
        return total[0] / np.float32(len(flips))

    def predict(self, image: Path | np.ndarray) -> OnnxPrediction:
        """Mask, quality and review flag of an image file, or of a uint8 ``(H, W, 3)`` RGB array (resized like
        a decoded file when it is not ``S`` x ``S``)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
            height, width = image.shape[:2]
            pixels = image if (height, width) == (self.size,) * 2 else resize_input(Image.fromarray(image), self.size)
        else:
            width, height = image_size(image)
            pixels = model_input(image, self.size)
        settings = self.settings
        cut = np.float32(settings.threshold_logit)  # the threshold's logit, compared in float32 as torch compares it
        logits = self.logits(pixels)
        box = zoom_box(logits > cut, settings.zoom)
        crop_logits = None if box is None else self.logits(crop_input(pixels, box))
        quality = mask_quality(
            sigmoid(compose_logits(logits, box, crop_logits, self.size, self.size)), settings.threshold
        )
        mask = clean_mask(compose_logits(logits, box, crop_logits, height, width) > cut, settings.postprocess)
        return OnnxPrediction(mask, quality, bool(needs_review(quality, settings.review_threshold)))


def crop_input(pixels: np.ndarray, box: Box) -> np.ndarray:
    """The zoom box of a uint8 ``(S, S, 3)`` model input resized to ``(S, S)`` bilinearly (half-pixel centres,
    no rounding): float32 ``(S, S, 3)`` in [0, 255], as :func:`lesionseg.inference.zoom.crop_input`."""
    top, left, bottom, right = box
    size = pixels.shape[0]
    crop = pixels[top:bottom, left:right].astype(np.float32)
    return np.stack([upsample_logits(crop[..., c], size, size) for c in range(3)], axis=-1)


def compose_logits(logits: np.ndarray, box: Box | None, crop_logits: np.ndarray | None, height: int, width: int):
    """The first pass's logits ``(S, S)`` at ``height`` x ``width``, with the crop's logits resized onto the
    zoom box, as :func:`lesionseg.inference.zoom.compose_logits`."""
    out = upsample_logits(logits, height, width)
    if box is None:
        return out
    y0, x0, y1, x1 = box_at(box, logits.shape[0], height, width)
    out = out.copy()
    out[y0:y1, x0:x1] = upsample_logits(crop_logits, y1 - y0, x1 - x0)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def mask_quality(probabilities: np.ndarray, threshold: float = 0.5, margin: float = UNCERTAIN_MARGIN) -> float:
    """numpy version of :func:`lesionseg.inference.quality.mask_quality` (the definition) for one probability map
    ``(H, W)`` as ``predict`` computes it: ``1 - uncertain / predicted area``, clipped to [0, 1],
    where a pixel is uncertain when its probability lies less than ``margin`` from ``threshold``; 0 for an
    empty mask."""
    area = int((probabilities > threshold).sum())
    if area == 0:
        return 0.0
    uncertain = int((np.abs(probabilities - np.float32(threshold)) < np.float32(margin)).sum())
    return float(np.float32(min(max(1 - uncertain / area, 0.0), 1.0)))


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` to ``(height, width)`` with half-pixel centres, as torch's
    ``F.interpolate(mode="bilinear", align_corners=False)`` (:func:`lesionseg.inference.logits.upsample_logits`)."""
    if logits.shape == (height, width):
        return logits
    (y0, y1, wy), (x0, x1, wx) = _taps(logits.shape[0], height), _taps(logits.shape[1], width)
    rows = logits[y0] * (1 - wy)[:, None] + logits[y1] * wy[:, None]
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and the weight of the second, in torch's float32 arithmetic
    (its source index ``scale * (i + 0.5) - 0.5`` is rounded once, as a fused multiply-add: float64 here)."""
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    source = np.maximum(((np.arange(size_out) + 0.5) * scale - 0.5).astype(np.float32), 0)
    first = np.minimum(np.floor(source).astype(int), size_in - 1)
    return first, np.minimum(first + 1, size_in - 1), np.clip(source - first, 0, 1).astype(np.float32)
