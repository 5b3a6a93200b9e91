import math

import pytest
import torch

from lesionseg.metrics import confusion_counts, per_image_scores, summarize
from lesionseg.training.losses import DiceBCELoss


def masks(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_confusion_counts_by_hand():
    pred = masks([[1, 1, 0, 0]], [[0, 0, 0, 0]])
    truth = masks([[1, 0, 1, 0]], [[0, 0, 0, 0]])
    counts = confusion_counts(pred, truth)
    assert counts.tolist() == [[1, 1, 1, 1], [0, 0, 0, 4]]


def test_per_image_scores_by_hand():
    # TP=2, FP=1, FN=1, TN=4 on 8 pixels.
    pred = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    scores = per_image_scores(confusion_counts(pred, truth))
    assert scores["jaccard"].item() == pytest.approx(2 / 4)
    assert scores["dice"].item() == pytest.approx(4 / 6)
    assert scores["accuracy"].item() == pytest.approx(6 / 8)
    assert scores["sensitivity"].item() == pytest.approx(2 / 3)
    assert scores["specificity"].item() == pytest.approx(4 / 5)


def test_empty_masks():
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    both_empty = per_image_scores(confusion_counts(empty, empty))
    assert both_empty["jaccard"].item() == 1.0 and both_empty["dice"].item() == 1.0
    assert both_empty["sensitivity"].item() == 1.0 and both_empty["specificity"].item() == 1.0
    missed = per_image_scores(confusion_counts(empty, full))
    assert missed["jaccard"].item() == 0.0 and missed["dice"].item() == 0.0 and missed["sensitivity"].item() == 0.0
    assert missed["specificity"].item() == 1.0  # no background pixel to get wrong
    false_alarm = per_image_scores(confusion_counts(full, empty))
    assert false_alarm["jaccard"].item() == 0.0 and false_alarm["specificity"].item() == 0.0


def test_summary_macro_micro_and_thresholded():
    # image 1: J = 1/2 (TP 1, FP 1); image 2: J = 3/4 (TP 3, FN 1); image 3: perfect.
    pred = masks([[1, 1, 0, 0]], [[1, 1, 1, 0]], [[1, 0, 0, 0]])
    truth = masks([[1, 0, 0, 0]], [[1, 1, 1, 1]], [[1, 0, 0, 0]])
    summary = summarize(confusion_counts(pred, truth))
    assert summary["jaccard"] == pytest.approx((0.5 + 0.75 + 1) / 3)
    assert summary["jaccard_micro"] == pytest.approx(5 / 7)  # TP 1+3+1, FP 1, FN 1
    assert summary["jaccard_thresholded"] == pytest.approx((0 + 0.75 + 1) / 3)
    assert summary["dice"] == pytest.approx((2 / 3 + 6 / 7 + 1) / 3)


def test_aggregation_does_not_depend_on_batching():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(10, 8, 8, generator=gen) > 0.5
    truth = torch.rand(10, 8, 8, generator=gen) > 0.4
    whole = summarize(confusion_counts(pred, truth))
    for batch in (1, 3, 4):  # 3 and 4 leave a partial last batch
        parts = [confusion_counts(pred[i : i + batch], truth[i : i + batch]) for i in range(0, 10, batch)]
        assert summarize(torch.cat(parts)) == pytest.approx(whole)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="non-empty"):
        summarize(torch.zeros(0, 4, dtype=torch.long))


def test_dice_bce_by_hand():
    logits = torch.tensor([0.0, 0.0, 2.0, -2.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    p = torch.sigmoid(logits).flatten()
    t = target.flatten()
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert DiceBCELoss()(logits, target).item() == pytest.approx((bce + 1 - dice).item())
    assert DiceBCELoss(bce_weight=0.0)(logits, target).item() == pytest.approx((1 - dice).item())


def test_dice_bce_on_empty_batch_is_finite_and_small_when_right():
    logits = torch.full((2, 1, 4, 4), -10.0)
    loss = DiceBCELoss()(logits, torch.zeros(2, 1, 4, 4))
    assert math.isfinite(loss.item()) and loss.item() < 0.05
