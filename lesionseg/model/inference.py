"""Batched logits of prepared uint8 images, plain or flip-averaged (TTA); the device, and the number format and
memory layout the training step uses on it.

``runtime.amp`` asks for ``auto``, ``bf16``, ``fp16`` or ``off``, ``runtime.channels_last`` for ``auto``, ``true`` or
``false``, ``runtime.tf32`` whether fp32 convolutions and matrix products on CUDA may round their inputs to TF32;
:func:`resolve_numerics` turns the requests into what a device uses (:class:`Numerics`), which the training loop
records in the checkpoint, the history, the MLflow run and the model card, so two runs that differ in it can be told
apart. ``auto`` precision is bf16 autocast where the device computes bf16 natively (a CUDA GPU from Ampere on,
:func:`cuda_has_native_bf16`; a CPU with :func:`cpu_has_native_bf16`), fp16 autocast with a gradient scaler on an
older CUDA GPU (T4, V100: bf16 convolutions are emulated there), fp32 elsewhere: on an AVX2-only CPU bf16 autocast
is emulated and about 12x slower than fp32 (issue 30). ``auto`` layout is NHWC (channels-last) on a CPU with native
bf16 (issue 30 measured it faster there, in fp32 and in bf16) and NCHW elsewhere: on an AVX2-only CPU the real
training loop was no faster with it, on an H200 the bare steps were slower (docs/benchmarks.md).

Inference (:func:`inference_numerics`) is fp32 without TF32 on every device unless a caller asks for another
precision, whatever the training used, so evaluation, ``predict``, the pyfunc and the ONNX reference produce the
same masks on a GPU as on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.data.normalize import normalize_batch
from lesionseg.model.settings import InferenceSettings


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


AMP_CHOICES = ("auto", "bf16", "fp16", "off")
PRECISIONS = ("bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.cpu.get_capabilities() keys of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm BF16 and SVE-BF16.
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: the one hardware question behind ``amp: auto`` (tests replace it)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # a torch before the public get_capabilities(): its private x86 helpers
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    found = capabilities()
    return any(bool(found.get(feature, False)) for feature in NATIVE_BF16_FEATURES)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes bf16 natively (Ampere and later; not emulated): ``amp: auto``'s question on
    CUDA (tests replace it)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def amp_request(value) -> str:
    """``runtime.amp``: one of :data:`AMP_CHOICES`."""
    if value not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {value!r}")
    return value


def channels_last_request(value) -> str | bool:
    """``runtime.channels_last``: ``auto``, ``True`` or ``False``."""
    if value != "auto" and not isinstance(value, bool):
        raise ValueError(f"channels_last must be auto, true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Numerics:
    """What the training step uses on its device: ``precision`` (``bf16`` or ``fp16`` autocast, or ``fp32``),
    ``channels_last`` (NHWC model and inputs) and ``tf32`` (fp32 convolutions and matrix products on CUDA in TF32),
    with the requests they were resolved from."""

    precision: str
    channels_last: bool
    amp_request: str
    channels_last_request: str | bool
    tf32: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def scaled(self) -> bool:
        """Whether the loss needs a gradient scaler: fp16's range underflows small gradients, bf16's does not."""
        return self.precision == "fp16"

    def record(self) -> dict:
        """Plain values, as the checkpoint (``numerics``), the MLflow run and the model card keep them."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "amp_request": self.amp_request,
            "channels_last_request": self.channels_last_request,
            "tf32": self.tf32,
        }


def resolve_numerics(amp, channels_last, device: torch.device, tf32: bool = False) -> Numerics:
    """The precision and layout of the training step on ``device`` for the requests ``amp`` and
    ``channels_last`` (``auto``: see the module doc), and the ``tf32`` choice. An explicit ``bf16`` or ``fp16`` is
    honoured on any device, also where it is slow."""
    amp, layout = amp_request(amp), channels_last_request(channels_last)
    if not isinstance(tf32, bool):
        raise ValueError(f"tf32 must be true or false, got {tf32!r}")
    bf16_cpu = device.type == "cpu" and cpu_has_native_bf16()
    if amp == "auto":
        if device.type == "cuda":
            precision = "bf16" if cuda_has_native_bf16(device) else "fp16"
        else:
            precision = "bf16" if bf16_cpu else "fp32"
    else:
        precision = "fp32" if amp == "off" else amp
    nhwc = bf16_cpu if layout == "auto" else layout
    return Numerics(precision, nhwc, amp, layout, tf32)


@contextlib.contextmanager
def tf32_mode(enabled: bool):
    """fp32 convolutions and matrix products on CUDA in TF32 (``enabled``) or in full fp32, restored after; no
    effect elsewhere. Set both ways: PyTorch's own defaults differ between convolutions and matrix products."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast_for(precision: str, device: torch.device):
    """bf16 or fp16 autocast on ``device`` for ``precision`` ``bf16``/``fp16``, a no-op for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_numerics(device: torch.device, precision: str = "fp32"):
    """Inference's number format on ``device``: ``fp32`` (the default, without TF32: the masks of the fp32 ONNX
    reference on every device) or, when a caller asks, ``bf16``/``fp16`` autocast."""
    with tf32_mode(False), autocast_for(precision, device):
        yield


@torch.no_grad()
def plain_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, 1, H, W)`` float32 for normalised ``x`` ``(N, 3, H, W)``."""
    return model(x).float()


@torch.no_grad()
def flip_averaged_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Flip TTA: the mean of the logits ``(N, 1, H, W)`` of ``x`` and of its horizontal, vertical and double
    flip, each flipped back first."""
    total = model(x).float()
    for dims in ((-1,), (-2,), (-2, -1)):
        total += model(x.flip(dims)).float().flip(dims)
    return total / 4


LogitsFunction = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def logits_function(settings: InferenceSettings) -> LogitsFunction:
    """How the settings run the network on a batch: :func:`flip_averaged_logits` with TTA, else
    :func:`plain_logits`."""
    return flip_averaged_logits if settings.tta else plain_logits


@torch.no_grad()
def predict_uint8(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
    forward: LogitsFunction = plain_logits,
) -> torch.Tensor:
    """Logits on the CPU, ``(N, 1, S, S)``, for uint8 ``(N, S, S, 3)`` images, in eval mode, each normalised
    batch run through ``forward`` (:func:`logits_function`; the plain network by default) in ``precision``
    (:func:`inference_numerics`)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = normalize_batch(images[start : start + batch_size].to(device))
        with inference_numerics(device, precision):
            out.append(forward(model, batch).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, *images.shape[1:3])


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``(N, 1, h, w)`` logits to ``(N, 1, height, width)``.

    Logits (not thresholded masks) are interpolated, so the boundary lands
    between pixels the way the network's probability field puts it.
    """
    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
