"""Where a model runs and in which number format: the device, and the precision, memory layout and TF32 choice
that training and inference use on it (the params' ``runtime`` section, resolved).

:func:`resolve_numerics` turns the ``runtime.amp``, ``channels_last`` and ``tf32`` requests into what a device uses
for training (:class:`Numerics`, recorded with every trained model): ``auto`` is bf16 autocast only where bf16 is
native, fp16 with a gradient scaler on an older CUDA GPU, fp32 elsewhere. Inference (:func:`inference_numerics`)
is fp32 without TF32 on every device unless a caller asks otherwise, so one image gets one mask everywhere.
The rules and their measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


_AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_PRECISIONS = ("bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.cpu.get_capabilities() keys of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm BF16 and SVE-BF16.
_NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: the one hardware question behind ``amp: auto`` (tests replace it)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # a torch before the public get_capabilities(): its private x86 helpers
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    found = capabilities()
    return any(bool(found.get(feature, False)) for feature in _NATIVE_BF16_FEATURES)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes bf16 natively (Ampere and later; not emulated): ``amp: auto``'s question on
    CUDA (tests replace it)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def amp_request(value) -> str:
    """``runtime.amp``: ``auto``, ``bf16``, ``fp16`` or ``off``."""
    if value not in _AMP_CHOICES:
        raise ValueError(f"amp must be one of {_AMP_CHOICES}, got {value!r}")
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
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if precision in _AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_numerics(device: torch.device, precision: str = "fp32"):
    """Inference's number format on ``device``: ``fp32`` (the default, without TF32: the masks of the fp32 ONNX
    reference on every device) or, when a caller asks, ``bf16``/``fp16`` autocast."""
    with tf32_mode(False), autocast_for(precision, device):
        yield
