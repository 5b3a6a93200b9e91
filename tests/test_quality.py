"""The mask quality score, the review threshold and the review metrics; predict's quality table."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import mannwhitneyu

from lesionseg.cli import main
from lesionseg.data.cache import Split
from lesionseg.data.prepare import PrepareConfig, prepare_dataset
from lesionseg.evaluation.evaluate import evaluate_checkpoint
from lesionseg.evaluation.review import (
    _failure_auroc,
    review_metrics,
    review_threshold,
    risk_coverage,
)
from lesionseg.experiments.model_metrics import ModelMetrics
from lesionseg.inference.exported import package_model
from lesionseg.inference.quality import mask_quality, needs_review
from lesionseg.inference.settings import InferenceSettings
from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig
from tests.helpers import TEST_IMAGES, TEST_MASKS, make_raw_tree, stretched_model


def square(inside: float, outside: float = 0.01, size: int = 64, side: int = 32) -> torch.Tensor:
    p = torch.full((1, 1, size, size), outside)
    p[..., 16 : 16 + side, 16 : 16 + side] = inside
    return p


def test_certain_masks_score_high_and_ambiguous_low():
    certain = square(0.99)
    blurred = certain.clone()
    blurred[..., 14:18, :] = 0.5  # a band of doubt across the lesion's edge
    ambiguous = square(0.6, outside=0.3)  # the whole lesion barely above threshold
    empty = torch.full((1, 1, 64, 64), 0.02)
    q = mask_quality(torch.cat([certain, blurred, ambiguous, empty]))
    assert q.shape == (4,) and q.dtype == torch.float32
    assert q[0] == 1.0 and q[2] == 0.0 and q[3] == 0.0  # an empty mask: nothing found, a failure
    assert 0.0 < q[1] < 1.0
    # 4 rows of 64 uncertain pixels against the predicted area (the square less its 2 blurred rows)
    assert q[1] == pytest.approx(1 - 4 * 64 / (30 * 32))


def test_quality_range_and_bad_shapes():
    torch.manual_seed(0)
    q = mask_quality(torch.rand(5, 1, 16, 16))
    assert q.shape == (5,) and bool(((q >= 0) & (q <= 1)).all())
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        mask_quality(torch.rand(5, 16, 16))
    with pytest.raises(ValueError, match="margin"):
        mask_quality(torch.rand(1, 1, 4, 4), threshold=1.0)
    with pytest.raises(ValueError, match="margin"):
        mask_quality(torch.rand(1, 1, 4, 4), margin=0.0)


def test_uncertain_means_within_the_margin_of_the_threshold():
    """0.25 and 0.75 are clear at the default margin (0.2); 0.35 and 0.65 are not; the margin moves with the
    threshold."""
    clear = square(0.75, outside=0.25)
    doubtful = square(0.65, outside=0.35)
    assert mask_quality(torch.cat([clear, doubtful])).tolist() == [1.0, 0.0]
    assert mask_quality(clear, threshold=0.6).item() == 0.0  # 0.75 is within 0.2 of 0.6
    assert mask_quality(clear, margin=0.3).item() == 0.0


def test_review_threshold_flags_the_chosen_share():
    quality = np.linspace(0.0, 1.0, 10)
    t = review_threshold(quality, 0.2)
    assert needs_review(quality, t).sum() == 2
    assert needs_review(quality, review_threshold(quality, 0.0)).sum() == 0
    assert not needs_review(quality, None).any()
    rng = np.random.default_rng(0)
    quality = rng.random(1000)
    assert needs_review(quality, review_threshold(quality, 0.2)).mean() == pytest.approx(0.2, abs=0.002)
    with pytest.raises(ValueError):
        review_threshold(quality, 1.0)
    with pytest.raises(ValueError, match="review_threshold"):
        InferenceSettings(review_threshold=1.5)


def test_failure_auroc_hand_example_and_scipy():
    # successes (IoU >= 0.7) score 0.9, 0.8, 0.7; failures 0.75, 0.2: 5 of 6 pairs ordered right
    quality = [0.9, 0.8, 0.7, 0.75, 0.2]
    iou = [0.9, 0.85, 0.8, 0.5, 0.1]
    assert _failure_auroc(quality, iou) == pytest.approx(5 / 6)
    assert _failure_auroc([0.5, 0.5], [0.9, 0.1]) == 0.5  # a tie counts half
    assert np.isnan(_failure_auroc([0.5, 0.6], [0.9, 0.8]))  # no failure
    # ... which metrics.json leaves out rather than write a NaN (not JSON, and not a number to compare)
    assert review_metrics([0.5, 0.6], [0.9, 0.8], 0.55) == {"review_accepted_jaccard": 0.8, "review_flagged": 0.5}
    rng = np.random.default_rng(1)
    quality, iou = rng.random(60), rng.random(60)
    failed = iou < 0.7
    pairs = [(f, s) for f, s in itertools.product(quality[failed], quality[~failed])]
    brute = np.mean([1.0 if f < s else 0.5 if f == s else 0.0 for f, s in pairs])
    assert _failure_auroc(quality, iou) == pytest.approx(brute)
    u = mannwhitneyu(quality[~failed], quality[failed]).statistic
    assert _failure_auroc(quality, iou) == pytest.approx(u / (failed.sum() * (~failed).sum()))


def test_review_metrics_hand_example():
    quality = [0.9, 0.8, 0.7, 0.75, 0.2]
    iou = [0.9, 0.85, 0.8, 0.5, 0.1]
    m = review_metrics(quality, iou, threshold=0.72)  # flags 0.7 and 0.2
    assert m == pytest.approx(
        {
            "review_auroc": 5 / 6,
            "review_caught": 0.5,  # of the failures (0.5, 0.1) the one at 0.1
            "review_accepted_jaccard": (0.9 + 0.85 + 0.5) / 3,
            "review_flagged": 0.4,
        }
    )
    assert set(review_metrics(quality, iou, None)) == {"review_auroc"}
    reviewed, accepted = risk_coverage(quality, iou)
    assert reviewed.tolist() == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert accepted[0] == pytest.approx(np.mean(iou)) and accepted[1] == pytest.approx((0.9 + 0.85 + 0.5 + 0.8) / 4)
    assert accepted[-1] == pytest.approx(0.9)


def test_review_threshold_is_a_fact_of_the_metrics_record():
    entry = {"orig_jaccard": 0.8, "review_auroc": 0.9, "val_review_flagged": 0.2, "review_threshold": 0.6}
    record = ModelMetrics.from_json(entry, "m")
    assert record.review_threshold == 0.6 and record.test == {"orig_jaccard": 0.8, "review_auroc": 0.9}
    assert record.to_json() == entry


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A random-weight model with a stretched head (:func:`tests.helpers.stretched_model`; 64 px checkpoint)
    and the synthetic data around it."""
    root = tmp_path_factory.mktemp("untrained")
    raw = make_raw_tree(root / "raw", 10, 6, size=(90, 70))
    prepare_dataset(raw, root / "prepared", PrepareConfig(size=64, workers=0))
    model = stretched_model(Split.load(root / "prepared" / "test.pt").images)
    save_checkpoint(make_checkpoint(model, ModelConfig("none"), 64, 1, {}), root / "model.pt")
    return root, raw


def test_evaluation_tables_carry_quality_and_the_validation_threshold(untrained, tmp_path):
    root, raw = untrained
    test, val = (Split.load(root / "prepared" / f"{n}.pt") for n in ("test", "val"))
    metrics, tables, _ = evaluate_checkpoint(root / "model.pt", test, val_split=val, review_fraction=0.5)
    table = tables["test"]
    assert {"quality", "review", "orig_jaccard"} <= set(table.columns)
    assert table["quality"].between(0, 1).all()
    _, plain, _ = evaluate_checkpoint(root / "model.pt", val)
    assert metrics["review_threshold"] == pytest.approx(np.quantile(plain["test"]["quality"], 0.5))
    assert (table["review"] == (table["quality"] < metrics["review_threshold"])).all()
    assert metrics["review_flagged"] == pytest.approx(table["review"].mean())
    assert "val_review_flagged" in metrics
    failed = table["orig_jaccard"] < 0.7
    assert ("review_auroc" in metrics) == bool(failed.any() and not failed.all())  # undefined: left out
    # lesionseg evaluate --per-image: the same quality column
    csv = tmp_path / "scores.csv"
    args = ["evaluate", "--checkpoint", str(root / "model.pt"), "--images", str(raw / TEST_IMAGES / TEST_IMAGES)]
    assert main([*args, "--masks", str(raw / TEST_MASKS / TEST_MASKS), "--per-image", str(csv), "--workers", "0"]) == 0
    assert pd.read_csv(csv)["quality"].to_numpy() == pytest.approx(table["quality"].to_numpy(), abs=1e-5)


def test_a_model_with_an_incomplete_settings_record_is_refused_naming_its_file(untrained, tmp_path, capsys):
    root, raw = untrained
    model = package_model([root / "model.pt"], InferenceSettings())
    del model["inference"]["zoom"]
    save_checkpoint(model, tmp_path / "old.pt")
    args = ["predict", "--quiet", "--checkpoint", str(tmp_path / "old.pt"), "--output", str(tmp_path / "out")]
    assert main([*args, str(raw / TEST_IMAGES / TEST_IMAGES)]) == 1
    assert f"{tmp_path / 'old.pt'}: missing inference settings: zoom" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_writes_the_quality_table_and_review_only(untrained, tmp_path, capsys):
    root, raw = untrained
    images = raw / TEST_IMAGES / TEST_IMAGES
    args = ["predict", "--quiet", str(images)]
    # A model exported without a review threshold: it still predicts, and says it flags nothing.
    save_checkpoint(package_model([root / "model.pt"], InferenceSettings()), tmp_path / "old.pt")
    assert main([*args, "--checkpoint", str(tmp_path / "old.pt"), "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr()
    assert "stores no review threshold" in printed.err and "none flagged" in printed.out
    table = pd.read_csv(tmp_path / "a" / "quality.csv", keep_default_na=False)
    assert list(table.columns) == ["file", "mask", "quality", "review", "mask_area_px"] and len(table) == 6
    assert (table["review"] == "").all() and table["quality"].between(0, 1).all()
    for row in table.itertuples():
        stem = row.file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        assert row.mask == f"{stem}_mask.png"
        assert (np.asarray(Image.open(tmp_path / "a" / row.mask)) > 127).sum() == row.mask_area_px
    review_only = ["--checkpoint", str(tmp_path / "old.pt"), "--output", str(tmp_path / "x"), "--review-only"]
    assert main([*args, *review_only]) == 2
    assert "--review-only needs a review threshold" in capsys.readouterr().err

    # Exported with a threshold between the scores: exactly the masks below it are flagged, and written.
    threshold = float(np.median(table["quality"]))
    save_checkpoint(
        package_model([root / "model.pt"], InferenceSettings(review_threshold=threshold)), tmp_path / "m.pt"
    )
    out = tmp_path / "b"
    assert main([*args, "--checkpoint", str(tmp_path / "m.pt"), "--output", str(out), "--review-only"]) == 0
    flagged = pd.read_csv(out / "quality.csv")
    expected = flagged["quality"] < threshold
    assert (flagged["review"] == np.where(expected, "yes", "no")).all() and 0 < expected.sum() < 6
    assert flagged["quality"].nunique() > 1
    assert f"{expected.sum()} flagged for review" in capsys.readouterr().out
    written = {p.name for p in out.glob("*_mask.png")}
    stems = {f.rsplit("/", 1)[-1].rsplit(".", 1)[0] + "_mask.png" for f in flagged["file"][expected]}
    assert written == stems


def test_risk_coverage_figure(tmp_path):
    from lesionseg.report.figures import plot_risk_coverage

    rng = np.random.default_rng(2)
    quality = rng.random(40)
    table = pd.DataFrame({"quality": quality, "orig_jaccard": quality, "review": quality < 0.2})
    assert plot_risk_coverage({"test": table, "clinic_a": table.drop(columns="review")}, "t", tmp_path / "rc.png")
    assert Image.open(tmp_path / "rc.png").size[0] > 100
    assert not plot_risk_coverage({"test": table.drop(columns="quality"), "x": None}, "t", tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()


def test_export_stage_takes_the_evaluate_stages_threshold(tmp_path, capsys):
    from stages.export import stored_review_threshold as exported_threshold

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"finetune_all": {"orig_jaccard": 0.8, "review_threshold": 0.61}, "frozen": {"loss": 0.3}}')
    assert exported_threshold(metrics, "finetune_all") == 0.61
    assert exported_threshold(metrics, "frozen") is None  # metrics from before the threshold existed
    assert "no review threshold for frozen" in capsys.readouterr().out
