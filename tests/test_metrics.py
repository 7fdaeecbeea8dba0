"""The one confusion-matrix accumulator and the one definition of its scores: the VOC mIoU (hand-computed, against
numpy and torchmetrics), ignore pixels, unlabelled predictions, several matrices at once; label and branch names."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from asdt_lightning.constants import IGNORE_INDEX
from asdt_lightning.metrics import (
    BRANCH_TITLES,
    ConfusionMatrices,
    ConfusionMatrix,
    branch_title,
    confusion_counts,
    confusion_scores,
    iou_from_confusion,
    label_names,
    mean_iou,
    segmentation_scores,
)
from wsss_helpers import numpy_miou


def confusion_of(pred, target, k):
    metric = ConfusionMatrix(k)
    metric.update(torch.as_tensor(pred), torch.as_tensor(target))
    return metric.counts()


def test_hand_computed_case_with_ignored_pixels():
    gt = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])  # the pixel under gt 255 is not counted
    cm, unlabelled = confusion_of(pred, gt, 4)
    assert cm.dtype == torch.int64 and cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert unlabelled.tolist() == [0, 0, 0, 0]
    # IoU: bg 2/(3+3-2)=0.5, c1 2/(2+3-2)=2/3, c2 1/(2+1-1)=0.5, c3 absent everywhere -> excluded
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    iou = iou_from_confusion(cm)
    assert iou[:3].tolist() == pytest.approx([0.5, 2 / 3, 0.5]) and torch.isnan(iou[3])
    scores = segmentation_scores(cm, ["bg", "a", "b", "c"])
    assert scores["iou"]["c"] is None and scores["iou"]["a"] == pytest.approx(2 / 3)
    assert scores["precision"]["a"] == pytest.approx(2 / 3) and scores["recall"]["a"] == pytest.approx(1.0)
    assert scores["precision"]["b"] == pytest.approx(1.0) and scores["recall"]["b"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7) and scores["labelled_fraction"] == 1.0


def test_unlabelled_prediction_is_counted_apart_and_is_a_miss():
    gt = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 255, 1, 255, 255])
    cm, unlabelled = confusion_of(pred, gt, 2)
    assert cm.tolist() == [[1, 0], [0, 1]] and unlabelled.tolist() == [1, 1]
    scores = segmentation_scores(cm, ["bg", "a"], unlabelled)
    assert scores["miou"] == pytest.approx(0.5) and scores["labelled_fraction"] == pytest.approx(0.5)
    assert scores["precision"]["a"] == 1.0 and scores["recall"]["a"] == 0.5
    assert segmentation_scores(cm, ["bg", "a"])["miou"] == 1.0  # without them: no miss


def test_agrees_with_numpy_and_with_torchmetrics():
    rng = np.random.default_rng(0)
    k = 6
    gts = [rng.integers(0, k, (17, 23)) for _ in range(5)]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    gts[0][gts[0] == 4] = 0  # a class missing from one image
    preds = [
        np.where(rng.random(g.shape) < 0.6, np.where(g == 255, 0, g), rng.integers(0, k - 1, g.shape)) for g in gts
    ]
    ours, theirs = ConfusionMatrix(k), MulticlassConfusionMatrix(k, ignore_index=IGNORE_INDEX)
    for p, g in zip(preds, gts, strict=True):
        ours.update(torch.from_numpy(p), torch.from_numpy(g))
        theirs.update(torch.from_numpy(p), torch.from_numpy(g))
    total = ours.compute()
    assert torch.equal(total, theirs.compute())  # the second stage's former accumulator
    assert mean_iou(total) == pytest.approx(numpy_miou(preds, gts, k), abs=1e-12)
    ours.reset()
    assert ours.counts()[0].sum() == 0 and ours.counts()[1].sum() == 0


def test_several_matrices_at_once_equal_one_at_a_time():
    generator = torch.Generator().manual_seed(3)
    metric = ConfusionMatrices(count=3, num_classes=4)
    expected = torch.zeros(3, 4, 4, dtype=torch.long)
    expected_unlabelled = torch.zeros(3, 4, dtype=torch.long)
    for _ in range(2):  # accumulates over updates
        target = torch.randint(0, 4, (2, 5, 6), generator=generator)
        target[0, :2] = 255
        preds = torch.randint(0, 4, (3, 2, 5, 6), generator=generator).to(torch.uint8)
        preds[1, 1, 3:] = 255  # unlabelled pixels in one of the predictions
        metric.update(preds, target)
        for m in range(3):
            cm, unlabelled = confusion_of(preds[m], target, 4)
            expected[m] += cm
            expected_unlabelled[m] += unlabelled
    assert torch.equal(metric.compute(), expected)
    confmat, unlabelled = metric.counts()
    assert torch.equal(confmat, expected) and torch.equal(unlabelled, expected_unlabelled)
    assert unlabelled[1].sum() > 0 and unlabelled[0].sum() == 0
    metric.reset()
    assert metric.counts()[0].sum() == 0
    with pytest.raises(ValueError, match="expected predictions"):
        metric.update(torch.zeros(2, 2, 5, 6, dtype=torch.long), target)
    with pytest.raises(ValueError, match="ground-truth labels"):  # would land in another matrix's cells
        metric.update(torch.zeros(3, 2, 5, 6, dtype=torch.long), torch.full((2, 5, 6), 4))


def test_counts_equal_a_loop_over_pixels():
    generator = torch.Generator().manual_seed(5)
    k = 5
    target = torch.randint(0, k, (40,), generator=generator)
    target[::7] = IGNORE_INDEX
    preds = torch.randint(0, k, (2, 40), generator=generator)
    preds[:, ::5] = IGNORE_INDEX
    confmat, unlabelled = confusion_counts(preds, target, k)
    expected = torch.zeros(2, k, k, dtype=torch.long)
    expected_unlabelled = torch.zeros(2, k, dtype=torch.long)
    for m in range(2):
        for p, t in zip(preds[m].tolist(), target.tolist(), strict=True):
            if t == IGNORE_INDEX:
                continue
            if p == IGNORE_INDEX:
                expected_unlabelled[m, t] += 1
            else:
                expected[m, t, p] += 1
    assert torch.equal(confmat, expected) and torch.equal(unlabelled, expected_unlabelled)


def test_out_of_range_labels_are_refused():
    with pytest.raises(ValueError, match="predicted labels"):
        confusion_of(torch.tensor([7]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="predicted labels"):
        confusion_of(torch.tensor([3]), torch.tensor([0]), 3)  # not the unlabelled column either
    with pytest.raises(ValueError, match="ground-truth labels"):
        confusion_of(torch.tensor([0]), torch.tensor([5]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_of(torch.tensor([0, 1]), torch.tensor([0]), 3)


def test_one_definition_of_the_scores():
    confmat = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    unlabelled = torch.tensor([1, 0, 0])
    scores = confusion_scores(confmat, unlabelled)
    assert scores["iou"][:2].tolist() == pytest.approx([5 / (7 + 7 - 5), 3 / (5 + 4 - 3)])
    assert scores["recall"][0] == pytest.approx(5 / 7) and scores["precision"][0] == pytest.approx(5 / 7)
    assert torch.isnan(scores["iou"][2]) and torch.isnan(scores["precision"][2])
    plain = confusion_scores(confmat)["iou"]
    torch.testing.assert_close(iou_from_confusion(confmat), plain, rtol=0, atol=0, equal_nan=True)
    named = segmentation_scores(confmat, ["a", "b", "c"])
    assert named["iou"] == {"a": plain[0].item(), "b": plain[1].item(), "c": None}
    assert mean_iou(confmat) == named["miou"]


def test_label_names_and_branch_titles():
    assert label_names(["cat", "dog"], True) == ["background", "cat", "dog"]
    assert label_names(("person",), False) == ["person"]
    assert BRANCH_TITLES["cam"] == "CAM teacher (A)" and BRANCH_TITLES["fused"] == "fused (max R, S)"
    assert branch_title("fused") == BRANCH_TITLES["fused"] and branch_title("fused", "mean") == "fused (mean R, S)"
    assert branch_title("refine", "mean") == "refinement teacher (R)" and branch_title("other") == "other"
