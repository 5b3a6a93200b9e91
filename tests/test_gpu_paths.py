"""The GPU paths, checked on the CPU: the precision ``amp: auto`` picks per device, the fp16 + gradient scaler
step, fp32 inference everywhere, even shards of every global batch, and a fake ``cuda`` device.

The fake device: ``FakeTensorMode`` tensors that say ``cuda`` (shapes, dtypes and devices only, no data), with
CUDA's own autocast rules switched on by telling autocast that CUDA is there. Any operation that mixes a ``cuda``
and a ``cpu`` tensor (other than a 0-dim scalar, which CUDA accepts too) raises, as it does on a real GPU.
``make gpu-check`` (scripts/gpu_check.py) runs the same code on a real one.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lesionseg import runtime
from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.augment.batch_augment import DeviceBatches, _augment_batch
from lesionseg.data.cache import Split
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.inference.logits import logits_function, predict_uint8
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import read_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.runtime import Numerics, inference_numerics, resolve_numerics
from lesionseg.training.distributed import Distributed
from lesionseg.training.train import (
    TrainConfig,
    TrainingJob,
    _forward_loss,
    _set_up_training,
    _training_batches,
    train_model,
)
from tests.helpers import make_raw_tree

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FAST = dict(epochs=1, batch_size=4, progress=False, device="cpu", seed=5)
# Every transform with a batched device implementation; JPEG runs on the host by design (one image at a time).
ALL_DEVICE_TRANSFORMS = AugmentConfig(
    hflip=0.5, vflip=0.5, scale_rotate=0.5, brightness_contrast=0.5, hue_saturation=0.5, gamma=0.5, blur=0.5,
    noise=0.5, jpeg=0.0, lesion_crop=0.5,
)  # fmt: skip


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_dataset(
        make_raw_tree(root / "raw", 10, 4), root / "prepared", PrepareConfig(size=64, val_fraction=0.2, workers=0)
    )
    return {name: Split.load(root / "prepared" / f"{name}.pt") for name in ("train", "val")}


def _job(splits, folder, model=None, **overrides) -> TrainingJob:
    """A phase on the synthetic splits (``model``: a random-weight frozen-encoder network by default)."""
    if model is None:
        torch.manual_seed(0)
        model = build_model(ModelConfig("none"), unfreeze=0)
    config = TrainConfig(**{**FAST, **overrides})
    return TrainingJob(
        model, ModelConfig("none"), splits["train"], splits["val"], config, folder / "ckpt.pt", folder / "h.csv"
    )


def _fake_splits(n: int = 4, size: int = 64) -> dict:
    """Splits of fake tensors, made inside a fake mode: nothing real for it to convert but the model's weights."""
    images, masks = torch.zeros(n, size, size, 3, dtype=torch.uint8), torch.zeros(n, size, size, dtype=torch.uint8)
    split = Split(images, masks, [f"i{i}" for i in range(n)], torch.zeros(n, 2), torch.zeros(0), torch.zeros(n + 1))
    return {"train": split, "val": split}


# amp: auto per device


@pytest.mark.parametrize(
    ("device", "native_cuda", "native_cpu", "precision", "scaled"),
    [
        (CUDA, True, False, "bf16", False),  # Ampere and later (A100, H100, RTX 30xx+)
        (CUDA, False, True, "fp16", True),  # before Ampere (T4, V100): bf16 convolutions are emulated there
        (CPU, True, True, "bf16", False),  # AVX512-BF16, AMX or Arm BF16
        (CPU, True, False, "fp32", False),  # AVX2 only: bf16 would be emulated, about 12x slower
    ],
)
def test_amp_auto_is_bf16_only_where_the_device_computes_it(
    monkeypatch, device, native_cuda, native_cpu, precision, scaled
):
    monkeypatch.setattr(runtime, "cuda_has_native_bf16", lambda device: native_cuda)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_cpu)
    numerics = resolve_numerics("auto", False, device)
    assert (numerics.precision, numerics.scaled) == (precision, scaled)
    assert numerics.record() == {
        "precision": precision,
        "channels_last": False,
        "amp_request": "auto",
        "channels_last_request": False,
        "tf32": False,
    }
    # Asked for explicitly: honoured on every device; off is fp32.
    assert resolve_numerics("fp16", False, device).precision == "fp16"
    assert resolve_numerics("bf16", False, device).precision == "bf16"
    assert resolve_numerics("off", False, device, tf32=True) == Numerics("fp32", False, "off", False, True)


# fp16 autocast with the gradient scaler, on the CPU


def test_fp16_steps_with_a_gradient_scaler_and_records_it(splits, tmp_path):
    fp32 = train_model(_job(splits, tmp_path / "fp32", amp="off"))
    job = _job(splits, tmp_path / "fp16", amp="fp16")
    setup = _set_up_training(job, None)
    assert setup.numerics.scaled and setup.scaler.is_enabled() and setup.scaler.get_scale() == 2.0**16
    fp16 = train_model(job)
    # The same recipe in fp16: close to fp32's numbers, not the same, and recorded as fp16 everywhere.
    loss16, loss32 = fp16.history["train_loss"].iloc[0], fp32.history["train_loss"].iloc[0]
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, rel=0.05)
    assert pd.read_csv(tmp_path / "fp16" / "h.csv")["precision"].tolist() == ["fp16"]
    numerics = read_checkpoint(tmp_path / "fp16" / "ckpt.pt")["numerics"]
    assert numerics["precision"] == "fp16" and numerics["amp_request"] == "fp16"
    # Validation is inference: fp32 whatever the step used, so the fp32 weights of both runs are compared alike.
    assert torch.isfinite(torch.tensor(fp16.history["val_loss"].tolist())).all()


def test_the_scaler_skips_a_step_whose_fp16_gradients_overflow(splits, tmp_path):
    setup = _set_up_training(_job(splits, tmp_path, amp="fp16"), None)
    before = [p.detach().clone() for p in setup.model.parameters() if p.requires_grad]
    images, masks = next(iter(setup.batches))
    _, loss = _forward_loss(setup, images, masks)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss * float("inf")).backward()  # an overflow, as fp16 gradients can have
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    after = [p.detach() for p in setup.model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # skipped, not applied
    assert setup.scaler.get_scale() == 2.0**15  # and the scale backed off


# Inference: fp32 on every device unless asked


def test_inference_is_fp32_without_tf32_unless_asked():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # PyTorch's conv default
    try:
        with inference_numerics(CPU):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert not torch.is_autocast_enabled("cpu")
        assert torch.backends.cudnn.allow_tf32  # restored
        with inference_numerics(CPU, "bf16"):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


# Equal shards of every global batch


def test_a_global_batch_that_does_not_split_evenly_is_refused_naming_the_fix(splits):
    images, masks = splits["train"].images, splits["train"].masks
    message = r"batch_size 16 is the global batch .* multiple of the number of processes \(3\).* set it to 15 or 18"
    with pytest.raises(ValueError, match=message):
        DeviceBatches(images, masks, 16, AugmentConfig(), 0, "cpu", shard=(1, 3))
    # 15 splits: every rank gets 5 rows of every global batch, the last (padded, as DistributedSampler pads) too
    shards = [
        [len(x) for x, _ in DeviceBatches(images, masks, 15, AugmentConfig(), 0, "cpu", shard=(r, 3))] for r in range(3)
    ]
    assert shards[0] == shards[1] == shards[2] and 3 * sum(shards[0]) == -(-len(images) // 3) * 3
    with pytest.raises(ValueError, match=message):  # the loader path refuses it alike
        _training_batches(splits["train"], TrainConfig(batch_size=16, augment_on="loader"), CPU, Distributed(1, 3, 1))


# A fake CUDA device


@pytest.fixture
def fake_cuda(monkeypatch):
    """Makes a ``FakeTensorMode`` to enter, in which CUDA's autocast rules apply (its kernels are never run: only
    dtypes, shapes and devices are propagated). Modules built outside it move to the fake device with ``.to``;
    one mode per model (a mode remembers the real tensors it has converted)."""
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(runtime, "cuda_has_native_bf16", lambda device: True)
    return lambda: FakeTensorMode(allow_non_fake_inputs=True)


def _conv_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """The output dtypes of the model's convolutions, collected as it runs."""
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_gpu_augmentation_training_step_and_predict_keep_every_tensor_on_the_gpu(splits, tmp_path, fake_cuda):
    precisions = {"auto": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}
    for amp, dtype in precisions.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig("none"), unfreeze=0)  # real weights, moved to the fake GPU by the setup
        # The training setup's moving average, made before the fake mode: a deep copy of fake tensors copies
        # storage that is not there.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        with fake_cuda():
            job = _job(_fake_splits(), tmp_path, model, device="cuda", amp=amp, augment_on="device")
            host = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
            images = torch.zeros(4, 64, 64, 3, dtype=torch.uint8, device="cuda")
            masks = torch.zeros(4, 64, 64, dtype=torch.uint8, device="cuda")
            x, m = _augment_batch(images, masks, ALL_DEVICE_TRANSFORMS)
            assert (x.device.type, x.dtype, tuple(x.shape)) == ("cuda", torch.float32, (4, 3, 64, 64))
            assert m.device.type == "cuda"

            setup = _set_up_training(job, None)
            assert next(setup.model.parameters()).device.type == "cuda"
            convs = _conv_dtypes(setup.model)
            logits, loss = _forward_loss(setup, x, m)
            assert logits.device.type == loss.device.type == "cuda" and loss.dtype == torch.float32
            assert set(convs) == {dtype}, amp  # CUDA's autocast rules, in the precision amp resolved to
            # The moving average's step on the device: update_parameters' averaging of the float weights and
            # buffers (its first-call branch reads the counter's value, which a fake tensor does not have).
            ema.to(setup.device)
            pairs = [
                (a.detach(), b.detach())
                for a, b in zip(
                    [*ema.module.parameters(), *ema.module.buffers()], [*model.parameters(), *model.buffers()]
                )
                if a.is_floating_point()
            ]
            ema.multi_avg_fn([a for a, _ in pairs], [b for _, b in pairs], ema.n_averaged)
            assert {a.device.type for a, _ in pairs} == {"cuda"}

            # predict's device part: fp32 on the GPU (TTA on), the logits handed back on the CPU; bf16 if asked.
            convs = _conv_dtypes(ema.module)  # what is validated and checkpointed
            forward = logits_function(InferenceSettings(tta=True))
            logits = predict_uint8(ema.module, host, 2, CUDA, forward=forward)
            assert (logits.device, logits.dtype, tuple(logits.shape)) == (CPU, torch.float32, (3, 1, 64, 64))
            assert set(convs) == {torch.float32}
            convs.clear()
            predict_uint8(ema.module, host, 2, CUDA, precision="bf16")
            assert set(convs) == {torch.bfloat16}


def test_the_fake_device_catches_a_tensor_left_on_the_cpu(fake_cuda):
    with fake_cuda(), pytest.raises(Exception, match="found at least two devices, cuda:0 and cpu"):
        torch.zeros(4, 3, 8, 8, device="cuda") * torch.rand(4, 1, 1, 1)


def test_cuda_graph_steps_are_marked_for_every_mode_that_uses_them(tmp_path, fake_cuda):
    for mode, graphs in (("eager", False), ("default", False), ("reduce-overhead", True), ("max-autotune", True)):
        model = build_model(ModelConfig("none"), unfreeze=0)
        with fake_cuda():
            job = _job(_fake_splits(), tmp_path, model, device="cuda", compile=mode, augment_on="device")
            assert _set_up_training(job, None).cuda_graphs is graphs, mode
