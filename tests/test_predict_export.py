import hashlib
import json
import multiprocessing
import os
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lesionseg.cli import main
from lesionseg.data.cache import Split
from lesionseg.data.normalize import normalize_batch
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.errors import DataError
from lesionseg.evaluation.evaluate import evaluate_model
from lesionseg.inference.exported import package_model
from lesionseg.inference.logits import logits_function, predict_uint8
from lesionseg.inference.postprocess import clean_mask
from lesionseg.inference.quality import mask_quality
from lesionseg.inference.settings import InferenceSettings, PostprocessConfig, ZoomConfig
from lesionseg.inference.zoom import zoom_pass
from lesionseg.metrics import confusion_counts, summarize
from lesionseg.model.checkpoint import load_model, load_models, make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.serving.export import log_pyfunc_model
from lesionseg.training.train import TrainConfig, TrainingJob, train_model
from tests.helpers import TEST_IMAGES, TEST_MASKS, lesion_pair, make_raw_tree


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
    train, val = splits["train"], splits["val"]
    train_model(TrainingJob(model, ModelConfig("none"), train, val, config, root / "model.pt", root / "h.csv"))
    return root, raw, splits


@pytest.mark.parametrize(
    ("cleanup", "zoom"), [(False, False), (True, False), (True, True)], ids=["raw", "postprocessed", "zoom"]
)
def test_predict_matches_evaluate_at_original_resolution(trained, tmp_path, cleanup, zoom):
    root, raw, splits = trained
    model, _ = load_model(root / "model.pt")
    postprocess = PostprocessConfig(keep_largest=cleanup, fill_holes=cleanup)
    settings = InferenceSettings(postprocess=postprocess, zoom=ZoomConfig(enabled=zoom))
    metrics, table = evaluate_model(model, splits["test"], settings)
    if zoom:  # the second pass changes some of these masks: the comparison covers it
        first = predict_uint8(model, splits["test"].images)
        boxes = zoom_pass(model, splits["test"].images, first, settings).boxes
        assert any(box is not None for box in boxes)
        assert table["zoomed"].tolist() == [box is not None for box in boxes]
        _, plain = evaluate_model(model, splits["test"], InferenceSettings(postprocess=postprocess))
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
    plain = InferenceSettings()
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
    expected, _ = evaluate_model(model, splits["test"])
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
    save_checkpoint(package_model(paths, InferenceSettings()), tmp_path / "ens.pt")
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
    # A training checkpoint stores no settings: the plain model's (InferenceSettings' defaults).
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
    largest = PostprocessConfig(keep_largest=True)
    settings = InferenceSettings(tta=True, threshold=0.4, postprocess=largest, review_threshold=0.9)
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
    logits = predict_uint8(model, splits["test"].images[:3], forward=logits_function(settings))
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


# lesionseg predict never loses a mask or replaces a user's file (issue 33). A random-weight model: these tests are
# about which files are written, not the masks' content (beyond their sizes, which tie each mask to its image).


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random") / "model.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig("none")), ModelConfig("none"), 64, 0, {}), path)
    return path


def _photo(path, size, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_pair(seed, *size)[0]).save(path)
    return path


def _files(root):
    """Every file under ``root``: relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _predict(model, out, *args):
    return main(["predict", "--quiet", "--checkpoint", str(model), "--output", str(out), *map(str, args)])


# --review-only writes the masks of quality < 1: here (a random model) those of every image with a lesion pixel.
MODES = {"masks": [], "overlays": ["--overlay"], "review-only": ["--review-only", "--review-threshold", "1"]}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_predict_keeps_every_mask_of_inputs_with_one_stem(random_model, tmp_path, mode):
    photos = tmp_path / "photos"
    sizes = {"photos/a.jpg": (40, 30), "photos/a.png": (50, 36), "photos/b.png": (44, 33)}
    sizes |= {"d1/ISIC_0000001.jpg": (60, 40), "d2/ISIC_0000001.jpg": (36, 52)}
    for seed, (name, size) in enumerate(sizes.items()):
        _photo(tmp_path / name, size, seed)
    before = _files(tmp_path)
    out = tmp_path / "out"
    # b.png named again beside its folder: predicted once, under its plain name.
    assert _predict(random_model, out, *MODES[mode], photos, photos / "b.png", tmp_path / "d1", tmp_path / "d2") == 0
    expected = {
        "photos/a.jpg": "a.jpg_mask.png",
        "photos/a.png": "a.png_mask.png",
        "photos/b.png": "b_mask.png",  # no clash: the name users and lesionseg evaluate rely on
        "d1/ISIC_0000001.jpg": "d1__ISIC_0000001.jpg_mask.png",
        "d2/ISIC_0000001.jpg": "d2__ISIC_0000001.jpg_mask.png",
    }
    table = pd.read_csv(out / "quality.csv")
    assert dict(zip(table["file"], table["mask"])) == {str(tmp_path / k): v for k, v in expected.items()}
    overlays = {v.replace("_mask.png", "_overlay.png") for v in expected.values()} if mode == "overlays" else set()
    masks = set(table["mask"][table["review"] == "yes"] if mode == "review-only" else expected.values())
    assert set(_files(out)) == {"quality.csv", *masks, *overlays} and len(masks) >= 4
    for name, mask in expected.items():  # each mask is its own image's: the sizes differ
        assert mask not in masks or Image.open(out / mask).size == sizes[name]
    assert {k: v for k, v in _files(tmp_path).items() if not k.startswith("out/")} == before


@pytest.mark.parametrize("mode", sorted(MODES))
def test_predict_into_its_input_folder_keeps_the_users_masks(random_model, tmp_path, capsys, mode):
    clinic = tmp_path / "clinic"
    for i in range(2):
        _photo(clinic / f"x{i}.jpg", (40, 30), i)
    Image.new("L", (40, 30), 255).save(clinic / "x0_mask.png")  # the user's masks, as lesionseg evaluate reads them
    Image.new("L", (40, 30), 255).save(clinic / "x1_segmentation.png")
    before = _files(tmp_path)
    assert _predict(random_model, clinic, *MODES[mode], clinic) == 1
    printed = capsys.readouterr().err
    assert "skipped 2 mask or overlay file(s)" in printed and "x0_mask.png, x1_segmentation.png" in printed
    assert "nothing written" in printed and "would be replaced" in printed and "x0_mask.png" in printed.split(":")[-1]
    assert "--overwrite" in printed and "Traceback" not in printed
    assert _files(tmp_path) == before  # not one file written or changed
    # --overwrite replaces the user's mask named like predict's (asked for), never an input; the other user mask is
    # neither replaced nor taken as an image.
    images = {k: v for k, v in before.items() if k.endswith(".jpg")}
    assert _predict(random_model, clinic, *MODES[mode], "--overwrite", clinic) == 0
    after = _files(tmp_path)
    assert {k: after[k] for k in images} == images and after["clinic/x1_segmentation.png"] == before[
        "clinic/x1_segmentation.png"
    ]
    written = {"quality.csv", "x0_mask.png", "x1_mask.png"} | (
        {"x0_overlay.png", "x1_overlay.png"} if mode == "overlays" else set()
    )
    assert set(_files(clinic)) == {"x0.jpg", "x1.jpg", "x1_segmentation.png"} | written
    # The next run into the same folder: predict's own masks are replaced, and not taken as inputs.
    assert _predict(random_model, clinic, *MODES[mode], clinic) == 0
    assert set(_files(clinic)) == {"x0.jpg", "x1.jpg", "x1_segmentation.png"} | written
    assert {k: v for k, v in _files(tmp_path).items() if k in images} == images
    assert pd.read_csv(clinic / "quality.csv")["mask"].tolist() == ["x0_mask.png", "x1_mask.png"]


def test_predict_replaces_no_file_it_did_not_write(random_model, tmp_path, capsys):
    photo = _photo(tmp_path / "in" / "a.jpg", (40, 30))
    out = tmp_path / "out"
    out.mkdir()
    (out / "quality.csv").write_text("id,score\nx,1\n")  # someone else's table
    Image.new("L", (8, 8)).save(out / "a_mask.png")
    before = _files(tmp_path)
    assert _predict(random_model, out, photo) == 1
    printed = capsys.readouterr().err
    assert "2 file(s) there that the last predict run into it did not write (not listed in its quality.csv)" in printed
    assert "would be replaced: quality.csv, a_mask.png;" in printed and _files(tmp_path) == before
    # A table of an earlier lesionseg (before the mask column) is predict's own, and so are the masks it lists.
    (out / "quality.csv").write_text(f"file,quality,review,mask_area_px\n{photo},0.5,,3\n")
    assert _predict(random_model, out, photo) == 0
    assert Image.open(out / "a_mask.png").size == (40, 30) and _files(tmp_path)["in/a.jpg"] == before["in/a.jpg"]
    # An input file is never replaced, even with --overwrite: here the mask's name is a second link to the photo.
    (out / "a_mask.png").unlink()
    os.link(photo, out / "a_mask.png")
    before = _files(tmp_path)
    assert _predict(random_model, out, "--overwrite", photo) == 1
    assert f"{out / 'a_mask.png'} is one of the inputs" in capsys.readouterr().err and _files(tmp_path) == before


def test_predict_stops_before_writing_when_two_inputs_would_share_a_name(random_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    for seed, name in enumerate(["a.jpg", "a.png", "a.jpg.png"]):  # a.jpg's name with its extension: a.jpg.png's
        _photo(photos / name, (40, 30), seed)
    before = _files(tmp_path)
    assert _predict(random_model, tmp_path / "out", photos) == 1
    printed = capsys.readouterr().err
    assert f"a.jpg_mask.png would be the mask of {photos / 'a.jpg'} and of {photos / 'a.jpg.png'}" in printed
    assert not (tmp_path / "out").exists() and _files(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"not a checkpoint\n", "not a file written by torch.save"),
        ("module", "it holds a pickled Python object (torch.nn.modules.linear.Linear)"),
        ("cut-short", "a damaged or incomplete torch file: cut short, or changed after it was saved"),
        ("no-index", "a damaged or incomplete torch file (failed reading zip archive: failed finding central"),
    ],
    ids=["empty", "text", "pickled-module", "cut-short", "no-index"],
)
def test_an_unreadable_checkpoint_says_what_is_wrong_with_it(random_model, tmp_path, capsys, content, problem):
    bad = tmp_path / "bad.pt"
    if content == "module":
        torch.save(torch.nn.Linear(2, 2), bad)
    elif content == "cut-short":
        bad.write_bytes(random_model.read_bytes()[:5000])
    elif content == "no-index":  # the start of the archive only
        bad.write_bytes(random_model.read_bytes()[:100])
    else:
        bad.write_bytes(content)
    photo = _photo(tmp_path / "a.jpg", (40, 30))
    assert main(["predict", "--quiet", "--checkpoint", str(bad), "--output", str(tmp_path / "out"), str(photo)]) == 1
    printed = capsys.readouterr().err
    assert printed.startswith(f"lesionseg predict: {bad}: not a lesionseg checkpoint: {problem}")
    assert "weights_only" not in printed and "Traceback" not in printed
    assert not (tmp_path / "out").exists()


def test_the_masks_of_an_interrupted_run_are_predicts_own_on_the_next(random_model, tmp_path):
    photos = tmp_path / "photos"
    for i in range(40):
        _photo(photos / f"p{i:03d}.png", (32, 24), i)
    out = tmp_path / "out"
    # The command in a forked process (it starts at once: the modules are imported already), killed part-way.
    args = ["predict", "--quiet", "--checkpoint", str(random_model), "--batch-size", "1", "--output", str(out)]
    process = multiprocessing.get_context("fork").Process(target=main, args=([*args, str(photos)],))
    process.start()
    try:
        while not list(out.glob("*_mask.png")) and process.is_alive():
            time.sleep(0.005)
    finally:
        process.kill()  # as a crash or a power cut would stop it: no clean-up
        process.join()
    written = len(list(out.glob("*_mask.png")))
    assert 0 < written < 40  # stopped part-way
    table = pd.read_csv(out / "quality.csv")
    assert len(table) == 40 and table["quality"].isna().all()  # the plan, scores to come
    assert _predict(random_model, out, photos) == 0  # the interrupted run's masks are replaced without --overwrite
    assert len(list(out.glob("*_mask.png"))) == 40 and pd.read_csv(out / "quality.csv")["quality"].notna().all()
