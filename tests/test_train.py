import pandas as pd
import pytest
import torch

from lesionseg import runtime
from lesionseg.data.cache import Split
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.errors import DataError
from lesionseg.evaluation.evaluate import evaluate_model
from lesionseg.inference.exported import package_model
from lesionseg.inference.logits import predict_uint8
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import FORMAT, load_model, read_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.runtime import Numerics, resolve_numerics
from lesionseg.serving.model_card import card_markdown, model_card
from lesionseg.training.phases import _phase_params
from lesionseg.training.train import (
    _HISTORY_COLUMNS,
    TrainConfig,
    TrainingJob,
    _lr_factor,
    make_optimizer,
    train_model,
)
from tests.helpers import make_raw_tree

FAST = dict(epochs=2, batch_size=4, progress=False, device="cpu", seed=5)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_dataset(
        make_raw_tree(root / "raw", 10, 4), root / "prepared", PrepareConfig(size=64, val_fraction=0.2, workers=0)
    )
    return {name: Split.load(root / "prepared" / f"{name}.pt") for name in ("train", "val", "test")}


def _job(model, splits, config, folder) -> TrainingJob:
    """Train ``model`` on the synthetic splits; checkpoint and history in ``folder``."""
    return TrainingJob(
        model, ModelConfig("none"), splits["train"], splits["val"], config, folder / "ckpt.pt", folder / "history.csv"
    )


def _train(splits, tmp_path, unfreeze=0, **overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights="none"), unfreeze=unfreeze)
    config = TrainConfig(**{**FAST, **overrides})
    result = train_model(_job(model, splits, config, tmp_path), checkpoint_extra={"run": "x"})
    return model, result


def test_training_writes_best_checkpoint_and_history(splits, tmp_path):
    rows = []
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights="none"))
    result = train_model(_job(model, splits, TrainConfig(**FAST), tmp_path), on_epoch=rows.append)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == list(_HISTORY_COLUMNS) and len(history) == 2 == len(rows)
    assert history["val_jaccard"].max() == pytest.approx(result.best_metrics["jaccard"])
    checkpoint = read_checkpoint(tmp_path / "ckpt.pt")
    assert checkpoint["format"] == FORMAT and checkpoint["epoch"] == result.best_epoch
    assert checkpoint["unfreeze"] == "0" and checkpoint["preprocessing"]["size"] == 64
    assert checkpoint["param_counts"]["trainable"] == 4_771_585
    assert checkpoint["train_config"]["epochs"] == 2


def test_same_seed_gives_identical_history(splits, tmp_path):
    _, a = _train(splits, tmp_path / "a", unfreeze="all")
    _, b = _train(splits, tmp_path / "b", unfreeze="all")
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))
    _, c = _train(splits, tmp_path / "c", unfreeze="all", seed=6)
    assert not a.history["train_loss"].equals(c.history["train_loss"])


def test_checkpoint_roundtrip_reproduces_predictions(splits, tmp_path):
    model, result = _train(splits, tmp_path, epochs=1)
    loaded, checkpoint = load_model(tmp_path / "ckpt.pt")
    assert checkpoint["extra"] == {"run": "x"}
    metrics, table = evaluate_model(loaded, splits["val"], batch_size=3)
    assert metrics["jaccard"] == pytest.approx(result.best_metrics["jaccard"])
    assert len(table) == len(splits["val"]) and {"id", "jaccard", "orig_jaccard"} <= set(table.columns)


def test_evaluation_does_not_depend_on_batch_size(splits, tmp_path):
    model, _ = _train(splits, tmp_path, epochs=1)
    a, _ = evaluate_model(model, splits["test"], batch_size=1)
    b, _ = evaluate_model(model, splits["test"], batch_size=3)  # 4 images: a partial last batch
    assert a == pytest.approx(b)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, splits):
    _train(splits, tmp_path, epochs=1)
    checkpoint = read_checkpoint(tmp_path / "ckpt.pt")
    checkpoint["state_dict"]["decoder.head.weight"] = torch.zeros(2, 64, 1, 1)
    save_checkpoint(checkpoint, tmp_path / "other.pt")
    with pytest.raises(DataError, match=r"other.pt: checkpoint does not fit the lesionseg architecture"):
        load_model(tmp_path / "other.pt")
    torch.save({"some": "dict"}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match=r"foreign.pt: not a lesionseg checkpoint"):
        load_model(tmp_path / "foreign.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled_module.pt")
    with pytest.raises(DataError, match=r"pickled_module.pt: not a lesionseg checkpoint: it holds a pickled Python"):
        load_model(tmp_path / "pickled_module.pt")


def test_lr_schedule_warmup_and_cosine():
    config = TrainConfig(epochs=4, lr=1.0, scheduler="cosine", warmup_epochs=1)
    factors = [_lr_factor(step, 10, config) for step in range(40)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.05
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert _lr_factor(25, 10, TrainConfig(epochs=4)) == 1.0
    # A run as short as its warm-up (smoke tests of the recipe) is valid: the LR only ramps up.
    short = TrainConfig(epochs=1, lr=1.0, warmup_epochs=1)
    assert [_lr_factor(step, 4, short) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be a positive integer"),
        ("epochs", -3, "epochs"),
        ("batch_size", 0, "batch_size"),
        ("lr", -1e-3, "lr must be a positive number"),
        ("optimizer", "sgd", "optimizer must be one of"),
        ("scheduler", "step", "scheduler"),
        ("warmup_epochs", 5, "warmup_epochs"),
        ("ema_decay", 1.0, "ema_decay"),
        ("ema_decay", -0.1, "ema_decay"),
        ("augment_on", "gpu", "augment_on must be one of"),
        ("compile", "fast", "compile must be one of"),
        ("fused_optimizer", True, "fused_optimizer must be one of"),
    ],
)
def test_train_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=4, **{field: value}) if field != "epochs" else TrainConfig(**{field: value})


def test_ema_checkpoint_holds_the_averaged_weights(splits, tmp_path):
    torch.manual_seed(0)
    initial = build_model(ModelConfig(encoder_weights="none"), unfreeze="all").state_dict()["decoder.head.weight"]
    _train(splits, tmp_path / "raw", unfreeze="all", lr=1e-2)
    _train(splits, tmp_path / "ema", unfreeze="all", lr=1e-2, ema_decay=0.95)
    raw = read_checkpoint(tmp_path / "raw" / "ckpt.pt")["state_dict"]
    ema = read_checkpoint(tmp_path / "ema" / "ckpt.pt")["state_dict"]
    assert raw.keys() == ema.keys()
    # Same seed and data, so the raw weights follow the same path in both runs; their
    # average (mostly the initial weights after a few steps at decay 0.95) lags behind.
    moved_raw = float((raw["decoder.head.weight"] - initial).norm())
    moved_ema = float((ema["decoder.head.weight"] - initial).norm())
    assert 0 < moved_ema < moved_raw


def test_device_side_augmentation_trains_on_cpu_too(splits, tmp_path):
    _, loader = _train(splits, tmp_path / "loader", augment_on="loader")
    _, device = _train(splits, tmp_path / "device", augment_on="device", channels_last=True)
    assert list(device.history.columns) == list(_HISTORY_COLUMNS) and len(device.history) == 2
    assert device.history["train_loss"].notna().all()
    # Different random streams, same data: not the same numbers.
    assert not loader.history["train_loss"].equals(device.history["train_loss"])


def test_fused_optimizer_follows_the_same_path(splits, tmp_path):
    _, plain = _train(splits, tmp_path / "plain", unfreeze="all", fused_optimizer="off")
    _, fused = _train(splits, tmp_path / "fused", unfreeze="all", fused_optimizer="on")  # fused Adam on the CPU
    # The same updates up to float rounding: one kernel instead of a loop over parameters.
    for column in ("train_loss", "val_loss"):
        assert fused.history[column].to_numpy() == pytest.approx(plain.history[column].to_numpy(), rel=1e-3, abs=1e-4)
    # Jaccard thresholds the logits: rounding flips the odd pixel near 0.5 (a few in 10^4 of the tiny val split).
    assert fused.history["val_jaccard"].to_numpy() == pytest.approx(plain.history["val_jaccard"].to_numpy(), abs=1e-3)


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on 2 cores
def test_compiled_training_step_matches_eager(splits, tmp_path):
    torch._dynamo.reset()
    # In fp32: under bf16 autocast (auto on a CPU with native bf16) fused and eager kernels round differently.
    fp32 = dict(epochs=1, amp="off", channels_last=False)
    _, eager = _train(splits, tmp_path / "eager", **fp32)
    _, compiled = _train(splits, tmp_path / "compiled", compile="default", **fp32)
    assert compiled.history["train_loss"].iloc[0] == pytest.approx(eager.history["train_loss"].iloc[0], rel=1e-3)
    assert compiled.history["val_jaccard"].iloc[0] == pytest.approx(eager.history["val_jaccard"].iloc[0], abs=1e-3)
    # What is saved is the plain module's state: it loads into an eager model.
    model, _ = load_model(tmp_path / "compiled" / "ckpt.pt")
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())


@pytest.mark.parametrize(("setting", "fused"), [("auto", True), ("on", True), ("off", None)])
def test_fused_optimizer_setting_on_the_cpu(setting, fused):
    model = build_model(ModelConfig(encoder_weights="none"), unfreeze=0)
    optimizer = make_optimizer(model, TrainConfig(fused_optimizer=setting), torch.device("cpu"))
    assert optimizer.defaults["fused"] is fused


def test_amp_and_channels_last_resolve_by_device_and_cpu(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # a CPU with AVX512-BF16, AMX or Arm BF16
    assert resolve_numerics("auto", "auto", cpu) == Numerics("bf16", True, "auto", "auto")
    assert resolve_numerics("off", "auto", cpu).precision == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)  # AVX2 only: bf16 would be emulated
    assert resolve_numerics("auto", "auto", cpu) == Numerics("fp32", False, "auto", "auto")
    assert resolve_numerics("bf16", True, cpu) == Numerics("bf16", True, "bf16", True)  # asked for: honoured
    monkeypatch.setattr(runtime, "cuda_has_native_bf16", lambda device: True)  # Ampere or later
    assert resolve_numerics("auto", "auto", cuda) == Numerics("bf16", False, "auto", "auto")
    assert resolve_numerics("auto", True, mps) == Numerics("fp32", True, "auto", True)
    for bad in ("fp8", "on", None, 1, True, False):  # no boolean aliases
        with pytest.raises(ValueError, match="amp must be one of"):
            TrainConfig(amp=bad)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="channels_last must be auto, true or false"):
            TrainConfig(channels_last=bad)


def test_amp_auto_trains_in_bf16_on_a_bf16_cpu_and_records_it(splits, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    _, without = _train(splits, tmp_path / "without", epochs=1)  # amp and channels_last: auto (the defaults)
    _, off = _train(splits, tmp_path / "off", epochs=1, amp="off")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    model, native = _train(splits, tmp_path / "native", epochs=1)  # two bf16 steps (emulated on this CPU)
    # Without native bf16, auto is fp32: the very numbers of amp off. With it, bf16: close, not the same.
    pd.testing.assert_frame_equal(without.history.drop(columns="seconds"), off.history.drop(columns="seconds"))
    assert native.history["train_loss"].iloc[0] != without.history["train_loss"].iloc[0]
    assert native.history["train_loss"].iloc[0] == pytest.approx(without.history["train_loss"].iloc[0], rel=0.05)

    record = {
        "precision": "bf16",
        "channels_last": True,
        "amp_request": "auto",
        "channels_last_request": "auto",
        "tf32": False,
    }
    history = pd.read_csv(tmp_path / "native" / "history.csv")
    assert list(history.columns) == list(_HISTORY_COLUMNS)
    assert history[["precision", "channels_last"]].to_dict("records") == [{"precision": "bf16", "channels_last": True}]
    without_history = pd.read_csv(tmp_path / "without" / "history.csv")
    assert without_history[["precision", "channels_last"]].to_dict("records") == [
        {"precision": "fp32", "channels_last": False}
    ]
    assert read_checkpoint(tmp_path / "native" / "ckpt.pt")["numerics"] == record
    assert read_checkpoint(tmp_path / "without" / "ckpt.pt")["numerics"] == {
        **record,
        "precision": "fp32",
        "channels_last": False,
    }
    params = _phase_params(model, ModelConfig("none"), TrainConfig(**FAST), 64)  # the phase's MLflow params
    assert {key: params[key] for key in record} == record

    card = model_card(
        name="frozen",
        checkpoint=package_model([tmp_path / "native" / "ckpt.pt"], InferenceSettings()),
        parameter_counts={},
        recipe={},
        data={},
        results={},
        provenance={},
    )
    assert card["model"]["training_numerics"] == [record]
    text = card_markdown(card)
    assert "Training step: bf16 autocast, channels-last (NHWC) memory layout (asked: runtime.amp auto" in text
    assert "in full fp32, no TF32 (runtime.tf32 false)." in text
    # Inference stays fp32 after a bf16 training unless bf16 is asked for: the fp32 logits, or bf16's.
    images = splits["val"].images
    fp32 = predict_uint8(model, images, 2)
    assert torch.equal(fp32, predict_uint8(model, images, 2, precision="fp32"))
    assert not torch.equal(fp32, predict_uint8(model, images, 2, precision="bf16"))
