"""On a real NVIDIA GPU (marker ``cuda``, skipped without one; ``make gpu-check`` runs them): the precision
``amp: auto`` picks for this card, the fp16 + scaler step, CPU and GPU predicting the same masks, a CUDA-graph
step, and with two GPUs a 2-process NCCL run with SyncBatchNorm and a compiled step."""

from __future__ import annotations

import pytest
import torch

from lesionseg.data.cache import Split
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.inference.predict import predict
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import read_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.training.train import TrainConfig, TrainingJob, train_model
from tests.helpers import make_raw_tree, params_project, run_stage

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (make gpu-check)"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-data")
    prepare_dataset(
        make_raw_tree(root / "raw", 24, 4), root / "prepared", PrepareConfig(size=64, val_fraction=0.25, workers=0)
    )
    return root / "prepared"


def _train(prepared, folder, **overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig("none"), unfreeze=0)
    config = TrainConfig(**{"epochs": 2, "batch_size": 8, "progress": False, "device": "cuda", **overrides})
    train, val = Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")
    job = TrainingJob(model, ModelConfig("none"), train, val, config, folder / "c.pt", folder / "h.csv")
    return model, train_model(job)


def test_amp_auto_trains_in_the_precision_this_card_computes_natively(prepared, tmp_path):
    _, result = _train(prepared, tmp_path, augment_on="device")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    expected = "bf16" if native else "fp16"
    assert result.history["precision"].tolist() == [expected] * 2
    numerics = read_checkpoint(tmp_path / "c.pt")["numerics"]
    assert numerics["precision"] == expected and numerics["tf32"] is False
    assert result.history["train_loss"].notna().all()


def test_fp16_with_the_gradient_scaler_trains(prepared, tmp_path):
    _, result = _train(prepared, tmp_path, amp="fp16")
    assert result.history["precision"].tolist() == ["fp16"] * 2
    assert torch.isfinite(torch.tensor(result.history["train_loss"].tolist())).all()


def test_the_gpu_and_the_cpu_predict_the_same_masks(prepared):
    torch.manual_seed(0)
    model = build_model(ModelConfig("none"), unfreeze=0).eval()
    images = Split.load(prepared / "val.pt").images
    settings = InferenceSettings(tta=True)
    on_cpu = predict(model, images, settings, device=torch.device("cpu"))
    on_gpu = predict(model.to("cuda"), images, settings, device=torch.device("cuda"))
    # fp32 without TF32 on both: the same logits up to summation order, the same masks but at the cut itself.
    torch.testing.assert_close(on_gpu.first_logits, on_cpu.first_logits, atol=1e-3, rtol=1e-4)
    near_cut = (on_cpu.input_logits - settings.threshold_logit).abs() < 1e-3
    assert torch.equal(on_gpu.input_masks()[~near_cut], on_cpu.input_masks()[~near_cut])


@pytest.mark.parametrize("mode", ["reduce-overhead"])
def test_a_cuda_graph_step_trains(prepared, tmp_path, mode):
    _, result = _train(prepared, tmp_path, compile=mode, augment_on="device")
    assert result.history["train_loss"].notna().all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_train_one_phase_with_nccl_syncbatchnorm_and_a_compiled_step(prepared, tmp_path):
    project = params_project(
        tmp_path / "project", runtime__nproc_per_node=2, runtime__device="cuda", runtime__compile="reduce-overhead",
        train__encoder_weights="none", train__epochs=2, train__batch_size=8,
    )  # fmt: skip
    result = run_stage(project, "train", "--data", prepared, "--checkpoint", "c.pt", "--history", "h.csv", timeout=300)
    assert "all 2 ranks hold identical weights" in result.stderr
    assert read_checkpoint(project / "c.pt")["extra"]["distributed"]["world_size"] == 2
