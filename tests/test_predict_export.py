import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from lesionseg.cli import main
from lesionseg.data.cache import Split
from lesionseg.data.normalize import normalize_batch
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.errors import DataError
from lesionseg.evaluation.evaluate import evaluate_model
from lesionseg.metrics import confusion_counts, summarize
from lesionseg.model.checkpoint import load_model, load_models, make_checkpoint, package_model, save_checkpoint
from lesionseg.model.inference import predict_uint8
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.model.postprocess import InferenceConfig, PostprocessConfig, ZoomConfig, clean_mask
from lesionseg.model.quality import mask_quality
from lesionseg.model.zoom import zoom_pass
from lesionseg.serving.export import log_pyfunc_model
from lesionseg.training.train import TrainConfig, train_model
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


@pytest.mark.parametrize(
    ("cleanup", "zoom"), [(False, False), (True, False), (True, True)], ids=["raw", "postprocessed", "zoom"]
)
def test_predict_matches_evaluate_at_original_resolution(trained, tmp_path, cleanup, zoom):
    root, raw, splits = trained
    model, _ = load_model(root / "model.pt")
    postprocess = PostprocessConfig(keep_largest=cleanup, fill_holes=cleanup)
    zoom_config = ZoomConfig(enabled=zoom)
    metrics, table = evaluate_model(model, splits["test"], postprocess=postprocess, zoom=zoom_config)
    if zoom:  # the second pass changes some of these masks: the comparison covers it
        first = predict_uint8(model, splits["test"].images)
        boxes = zoom_pass(model, splits["test"].images, first, zoom_config).boxes
        assert any(box is not None for box in boxes)
        assert table["zoomed"].tolist() == [box is not None for box in boxes]
        _, plain = evaluate_model(model, splits["test"], postprocess=postprocess)
        assert not np.array_equal(plain["orig_accuracy"], table["orig_accuracy"])
    images = raw / TEST_IMAGES / TEST_IMAGES
    options = [
        "--no-tta",
        *(["--keep-largest", "--fill-holes"] if cleanup else ["--no-keep-largest", "--no-fill-holes"]),
        "--zoom" if zoom else "--no-zoom",
    ]
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


def test_predict_defaults_to_the_settings_stored_with_the_model(trained, tmp_path, capsys):
    root, raw, splits = trained
    images = raw / TEST_IMAGES / TEST_IMAGES
    plain = InferenceConfig(tta=False, keep_largest=False, fill_holes=False)
    save_checkpoint(package_model([root / "model.pt"], plain), tmp_path / "plain.pt")
    args = ["predict", "--quiet", str(images)]
    assert main([*args, "--checkpoint", str(tmp_path / "plain.pt"), "--output", str(tmp_path / "a")]) == 0
    assert "tta=off, threshold=0.5, keep_largest=off, fill_holes=off" in capsys.readouterr().out
    # A training checkpoint carries no settings: the plain model, and it says so; flags choose the recipe's.
    assert main([*args, "--checkpoint", str(root / "model.pt"), "--output", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr()
    assert "tta=off, threshold=0.5, keep_largest=off, fill_holes=off" in printed.out
    assert "the checkpoint stores no inference settings: the plain model" in printed.out
    recipe = ["--tta", "--keep-largest", "--fill-holes"]
    assert main([*args, "--checkpoint", str(root / "model.pt"), "--output", str(tmp_path / "c"), *recipe]) == 0
    assert "tta=on, threshold=0.5, keep_largest=on, fill_holes=on" in capsys.readouterr().out
    model, _ = load_model(root / "model.pt")
    expected, _ = evaluate_model(model, splits["test"], tta=False)
    counts = []
    for isic_id in splits["test"].ids:
        pred = np.asarray(Image.open(tmp_path / "a" / f"{isic_id}_mask.png")) > 127
        truth = np.asarray(Image.open(raw / TEST_MASKS / TEST_MASKS / f"{isic_id}_Segmentation.png")) > 127
        counts.append(confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None]))
    assert summarize(torch.cat(counts))["jaccard"] == pytest.approx(expected["orig_jaccard"], abs=1e-9)


def test_ensemble_of_checkpoints_predicts_and_exports(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    root, raw, splits = trained
    torch.manual_seed(1)
    other = build_model(ModelConfig("none"), unfreeze="all")
    save_checkpoint(make_checkpoint(other, ModelConfig("none"), 64, 1, {"jaccard": 0.1}), tmp_path / "other.pt")
    paths = [root / "model.pt", tmp_path / "other.pt"]
    ensemble, _ = load_models(paths)
    members = [load_model(p)[0].eval() for p in paths]
    x = normalize_batch(splits["test"].images[:2])
    with torch.no_grad():
        mean_probability = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0)
        assert torch.allclose(torch.sigmoid(ensemble.eval()(x)), mean_probability, atol=1e-5)
    # The same ensemble packaged as one exported file loads to the same model.
    save_checkpoint(package_model(paths, InferenceConfig()), tmp_path / "ens.pt")
    packaged, _ = load_model(tmp_path / "ens.pt")
    with torch.no_grad():
        assert torch.allclose(packaged.eval()(x), ensemble(x), atol=1e-6)
    images = raw / TEST_IMAGES / TEST_IMAGES
    ckpts = ["--checkpoint", *map(str, paths)]
    assert main(["predict", *ckpts, "--output", str(tmp_path / "p"), "--quiet", str(images)]) == 0
    assert len(list((tmp_path / "p").glob("*_mask.png"))) == len(splits["test"])
    assert main(["export", *ckpts, "--onnx", str(tmp_path / "e.onnx")]) == 0
    (onnx_logits,) = ort.InferenceSession(str(tmp_path / "e.onnx")).run(None, {"image": x.numpy()})
    assert np.abs(onnx_logits - ensemble(x).detach().numpy()).max() < 1e-3
    bad = build_model(ModelConfig("none"))
    save_checkpoint(make_checkpoint(bad, ModelConfig("none"), 96, 1, {}), tmp_path / "size96.pt")
    with pytest.raises(DataError, match="size96.pt: preprocessing differs"):
        load_models([root / "model.pt", tmp_path / "size96.pt"])


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
    # A training checkpoint stores no settings: the plain model's (InferenceConfig's defaults).
    assert json.loads(meta["lesionseg.inference"]) == {
        "tta": False,
        "threshold": 0.5,
        "keep_largest": False,
        "fill_holes": False,
        "review_threshold": None,
        "zoom": False,
        "zoom_margin": 0.3,
        "zoom_max_share": 0.8,
    }


def test_mlflow_pyfunc_roundtrip(trained, tmp_path):
    root, _, splits = trained
    settings = InferenceConfig(tta=True, keep_largest=True, fill_holes=False, threshold=0.4, review_threshold=0.9)
    save_checkpoint(package_model([root / "model.pt"], settings), tmp_path / "exported.pt")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = log_pyfunc_model(tmp_path / "exported.pt")
    pickled = list((tmp_path / "art").rglob("python_model.pkl"))
    assert pickled and pickled[0].stat().st_size < 100_000  # the wrapper only: weights come from the checkpoint
    loaded = mlflow.pyfunc.load_model(uri)
    batch = splits["test"].images[:3].numpy()
    model, _ = load_model(root / "model.pt")
    logits = predict_uint8(model, splits["test"].images[:3], tta=True)
    # Default: masks with the stored settings (TTA, threshold 0.4, largest component).
    masks = loaded.predict(batch)
    expected = np.stack([clean_mask(p > 0.4, settings.postprocess) for p in torch.sigmoid(logits)[:, 0].numpy()])
    assert masks.shape == (3, 64, 64) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    assert np.array_equal(masks, expected)
    probs = loaded.predict(batch, params={"output": "probabilities", "tta": False})
    plain = torch.sigmoid(predict_uint8(model, splits["test"].images[:3]))[:, 0].numpy()
    assert probs.dtype == np.float32 and np.abs(probs - plain).max() < 1e-5
    # The masks with their quality and review flag (at the stored review threshold, or one passed per call).
    scored = loaded.predict(batch, params={"output": "mask_quality"})
    quality = mask_quality(torch.sigmoid(logits), 0.4).numpy()
    assert np.array_equal(scored["mask"], expected) and scored["quality"] == pytest.approx(quality, abs=1e-5)
    assert np.array_equal(scored["review"], quality < 0.9)
    relaxed = loaded.predict(batch, params={"output": "mask_quality", "review_threshold": 0.0})
    assert not relaxed["review"].any()


def test_checkpoint_metadata_is_weights_only_loadable(tmp_path):
    model = build_model(ModelConfig("none"))
    save_checkpoint(make_checkpoint(model, ModelConfig("none"), 64, 1, {"jaccard": 0.5}), tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["metrics"] == {"jaccard": 0.5}
