import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from lesionseg.cache import Split
from lesionseg.checkpoint import load_model, make_checkpoint, save_checkpoint
from lesionseg.cli import main
from lesionseg.evaluate import evaluate_model
from lesionseg.export import log_pyfunc_model
from lesionseg.metrics import confusion_counts, summarize
from lesionseg.model import ModelConfig, build_model
from lesionseg.postprocess import PostprocessConfig
from lesionseg.prepare import PrepareConfig, prepare_dataset
from lesionseg.train import TrainConfig, train_model
from tests.helpers import TEST_IMAGES, TEST_MASKS, make_raw_tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained briefly on synthetic 64 px data, its raw tree and prepared splits."""
    root = tmp_path_factory.mktemp("trained")
    raw = make_raw_tree(root / "raw", 10, 5, size=(90, 70))
    prepare_dataset(raw, root / "prepared", PrepareConfig(size=64, workers=0))
    splits = {n: Split.load(root / "prepared" / f"{n}.pt") for n in ("train", "val", "test")}
    torch.manual_seed(0)
    model = build_model(ModelConfig("none"), unfreeze="all")
    config = TrainConfig(epochs=2, batch_size=4, progress=False, device="cpu")
    train_model(model, ModelConfig("none"), splits["train"], splits["val"], config, root / "model.pt", root / "h.csv")
    return root, raw, splits


@pytest.mark.parametrize("cleanup", [False, True], ids=["raw", "postprocessed"])
def test_predict_matches_evaluate_at_original_resolution(trained, tmp_path, cleanup):
    root, raw, splits = trained
    model, _ = load_model(root / "model.pt")
    postprocess = PostprocessConfig(keep_largest=cleanup, fill_holes=cleanup)
    metrics, _ = evaluate_model(model, splits["test"], postprocess=postprocess)
    images = raw / TEST_IMAGES / TEST_IMAGES
    options = ["--keep-largest", "--fill-holes"] if cleanup else []
    args = ["predict", "--checkpoint", str(root / "model.pt"), "--output", str(tmp_path), "--quiet"]
    assert main([*args, "--batch-size", "2", *options, str(images)]) == 0
    counts = []
    for isic_id in splits["test"].ids:
        pred = np.asarray(Image.open(tmp_path / f"{isic_id}_mask.png"))
        truth = np.asarray(Image.open(raw / TEST_MASKS / TEST_MASKS / f"{isic_id}_Segmentation.png")) > 127
        assert pred.shape == truth.shape == (70, 90) and set(np.unique(pred)) <= {0, 255}
        counts.append(confusion_counts(torch.from_numpy(pred > 127)[None], torch.from_numpy(truth)[None]))
    assert summarize(torch.cat(counts))["jaccard"] == pytest.approx(metrics["orig_jaccard"], abs=1e-9)


def test_predict_overlay_tta_and_bad_inputs(trained, tmp_path, capsys):
    root, raw, _ = trained
    good = next((raw / TEST_IMAGES).rglob("*.jpg"))
    gray = tmp_path / "in" / "gray.png"
    gray.parent.mkdir()
    Image.open(good).convert("L").resize((50, 31)).save(gray)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"nope")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(root / "model.pt"),
            "--output",
            str(out),
            "--overlay",
            "--tta",
            "--quiet",
            str(good),
            str(tmp_path / "in"),
        ]
    )
    assert code == 1  # one input failed
    printed = capsys.readouterr().out
    assert "predicted 2 of 3" in printed and "broken.jpg: not a readable image" in printed
    assert np.asarray(Image.open(out / "gray_mask.png")).shape == (31, 50)
    assert np.asarray(Image.open(out / f"{good.stem}_overlay.png")).shape == (70, 90, 3)


def test_onnx_export_matches_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    root, _, _ = trained
    assert main(["export", "--checkpoint", str(root / "model.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    model, _ = load_model(root / "model.pt")
    model.eval()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 3):  # dynamic batch dimension
        x = torch.randn(batch, 3, 64, 64)
        (onnx_logits,) = session.run(None, {"image": x.numpy()})
        assert np.abs(onnx_logits - model(x).detach().numpy()).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert '"size": 64' in meta["lesionseg.preprocessing"]


def test_mlflow_pyfunc_roundtrip(trained, tmp_path):
    root, _, splits = trained
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = log_pyfunc_model(root / "model.pt")
    pickled = list((tmp_path / "art").rglob("python_model.pkl"))
    assert pickled and pickled[0].stat().st_size < 100_000  # the wrapper only: weights come from the checkpoint
    loaded = mlflow.pyfunc.load_model(uri)
    batch = splits["test"].images[:3].numpy()
    probs = loaded.predict(batch)
    assert probs.shape == (3, 64, 64) and probs.dtype == np.float32 and probs.min() >= 0 and probs.max() <= 1
    model, _ = load_model(root / "model.pt")
    from lesionseg.inference import predict_uint8

    expected = torch.sigmoid(predict_uint8(model, splits["test"].images[:3]))[:, 0].numpy()
    assert np.abs(probs - expected).max() < 1e-5


def test_checkpoint_metadata_is_weights_only_loadable(tmp_path):
    model = build_model(ModelConfig("none"))
    save_checkpoint(make_checkpoint(model, ModelConfig("none"), 64, 1, {"jaccard": 0.5}), tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["metrics"] == {"jaccard": 0.5}
