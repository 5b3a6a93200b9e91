"""IoU and Dice under each averaging, from per-image pixel counts (lesionseg.evaluation.averaging)."""

import numpy as np
import pandas as pd
import pytest

from lesionseg.evaluation.averaging import _BATCH_SIZE, AVERAGINGS, averaged_scores, table_counts
from lesionseg.experiments.reproduction import averaging_table, reproduction_table, verdict

# TP, FP, FN, TN of two images: IoU 0.5 on a small lesion, 0.9 on a large one
TWO = np.array([[10, 5, 5, 80], [90, 5, 5, 0]])


def test_per_image_mean_and_pooled_differ_by_how_images_are_weighted():
    per_image = averaged_scores(TWO, "per_image")
    assert per_image.iou == pytest.approx((0.5 + 0.9) / 2)
    assert per_image.dice == pytest.approx((20 / 30 + 180 / 190) / 2)
    pooled = averaged_scores(TWO, "pooled")
    assert pooled.iou == pytest.approx(100 / 120)
    assert pooled.dice == pytest.approx(2 * pooled.iou / (1 + pooled.iou))  # one confusion matrix: Dice is IoU's


def test_two_class_averages_lesion_and_background_of_the_pooled_matrix():
    scores = averaged_scores(TWO, "two_class")
    lesion, background = 100 / 120, 80 / 100  # background: TP = TN 80, FP = FN 10, FN = FP 10
    assert scores.iou == pytest.approx((lesion + background) / 2)
    assert scores.dice == pytest.approx((200 / 220 + 160 / 180) / 2)


def test_per_batch_pools_within_each_batch_and_weights_batches_by_their_images():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(_BATCH_SIZE + 4, 4))
    first, last = counts[:_BATCH_SIZE].sum(0), counts[_BATCH_SIZE:].sum(0)
    iou = [tp / (tp + fp + fn) for tp, fp, fn, _ in (first, last)]
    scores = averaged_scores(counts, "batch16")
    assert scores.iou == pytest.approx((_BATCH_SIZE * iou[0] + 4 * iou[1]) / (_BATCH_SIZE + 4))
    low, high = scores.iou_ci95
    assert low <= scores.iou <= high


def test_every_averaging_has_intervals_around_its_point():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 100, size=(40, 4))
    for name in AVERAGINGS:
        scores = averaged_scores(counts, name)
        assert scores.iou_ci95[0] <= scores.iou <= scores.iou_ci95[1], name
        assert scores.dice_ci95[0] <= scores.dice <= scores.dice_ci95[1], name


def test_counts_come_from_the_per_image_table_and_a_table_without_them_is_refused():
    table = pd.DataFrame({"orig_tp": [1, 2], "orig_fp": [0, 1], "orig_fn": [3, 0], "orig_tn": [4, 5], "tp": [9] * 2})
    assert table_counts(table, "original").tolist() == [[1, 0, 3, 4], [2, 1, 0, 5]]
    with pytest.raises(ValueError, match=r"no pixel count column\(s\) \['fp', 'fn', 'tn'\]"):
        table_counts(table, "input")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        averaged_scores(TWO[:1], "pooled")


def _record(tmp_path, n=40):
    """A record with a frozen and a finetune_all test table (pixel counts at both sizes) and a CV summary."""
    rng = np.random.default_rng(2)
    record = tmp_path / "results" / "rec"
    (record / "per_image").mkdir(parents=True)
    (record / "cv").mkdir()
    for name in ("frozen", "finetune_all"):
        counts = rng.integers(1, 100, size=(n, 4))
        tp, fp, fn, _ = counts.T
        table = pd.DataFrame({"id": [f"ISIC_{i:07d}" for i in range(n)], "orig_jaccard": tp / (tp + fp + fn)})
        for prefix in ("", "orig_"):
            for i, column in enumerate(("tp", "fp", "fn", "tn")):
                table[prefix + column] = counts[:, i]
        table.to_csv(record / "per_image" / f"{name}.csv", index=False)
    (record / "cv" / "metrics.json").write_text('{"frozen": {"orig_jaccard": {"mean": 0.81, "se": 0.004}}}')
    published = tmp_path / "report.yaml"
    published.write_text("models:\n  frozen: {iou: 0.5, dice: 0.9}\n  finetune_1: {iou: 0.8, dice: 0.9}\n")
    return tmp_path / "results", published


def test_reproduction_table_sets_the_report_beside_ours_with_a_verdict(tmp_path):
    results, published = _record(tmp_path)
    text = reproduction_table("rec", "pooled", results, published)
    frozen = next(line for line in text.splitlines() if line.startswith("| frozen"))
    ours = averaged_scores(table_counts(pd.read_csv(results / "rec/per_image/frozen.csv"), "input"), "pooled")
    assert f"{ours.iou:.4f} [{ours.iou_ci95[0]:.4f}, {ours.iou_ci95[1]:.4f}]" in frozen
    assert "0.5000 / 0.9000" in frozen and "0.8100 ± 0.0040" in frozen
    assert f"ours below by {0.5 - ours.iou_ci95[1]:.4f}" in frozen
    assert text.splitlines()[-1].startswith("| finetune_all | - |")  # no published row, no CV: dashes
    assert verdict(0.8, (0.79, 0.81)) == "within" and verdict(0.9, (0.79, 0.81)) == "ours below by 0.0900"
    with pytest.raises(ValueError, match="unknown averaging 'mean'"):
        reproduction_table("rec", "mean", results, published)


def test_averaging_table_compares_each_averagings_dice_minus_iou_with_the_reports(tmp_path):
    results, published = _record(tmp_path)
    rows = [line for line in averaging_table("rec", results, published).splitlines() if line.startswith("| frozen")]
    assert len(rows) == len(AVERAGINGS)  # finetune_1 is published but not in the record: left out
    assert all("| +0.4000 |" in row for row in rows)  # the report's Dice - IoU
    pooled = averaged_scores(table_counts(pd.read_csv(results / "rec/per_image/frozen.csv"), "input"), "pooled")
    row = next(r for r in rows if AVERAGINGS["pooled"].label in r)
    assert row.endswith(f"| {pooled.dice - pooled.iou - 0.4:+.4f} |")
