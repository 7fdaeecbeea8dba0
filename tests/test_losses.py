import pytest
import torch
import torch.nn.functional as F

from asdt_lightning.method.cam import IGNORE_INDEX
from asdt_lightning.method.losses import (
    balanced_cross_entropy,
    classification_loss,
    pairwise_kernel,
    pairwise_loss,
    soft_distillation,
)


def test_balanced_ce_averages_background_and_foreground_separately():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 2
    labels[0, 3, 3] = IGNORE_INDEX
    pp = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    bg = pp[(labels == 0)].mean()
    fg = pp[(labels == 2)].mean()
    assert torch.allclose(balanced_cross_entropy(logits, labels), (bg + fg) / 2)
    # unbalanced mean would be dominated by the 13 background pixels
    assert not torch.allclose(balanced_cross_entropy(logits, labels), pp[labels != IGNORE_INDEX].mean())
    plain = balanced_cross_entropy(logits, labels, balanced=False)  # model.loss.balanced_ce=false
    assert torch.allclose(plain, pp[labels != IGNORE_INDEX].mean())


def test_balanced_ce_without_background_is_the_plain_mean():
    logits = torch.randn(2, 4, 5, 5)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[0, 0] = IGNORE_INDEX
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert torch.allclose(balanced_cross_entropy(logits, labels, has_background=False), expected)


def test_balanced_ce_with_only_one_group_uses_that_group():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert torch.allclose(balanced_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("connectivity", ["local", "full"])
def test_losses_on_empty_labels_are_zero_with_a_finite_gradient(connectivity):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = balanced_cross_entropy(logits, empty) + soft_distillation(
        logits, torch.softmax(torch.randn(2, 3, 4, 4), 1), torch.zeros(2, 4, 4, dtype=torch.bool)
    )
    invalid = torch.zeros(2, 4, 4).bool()
    kernel = pairwise_kernel(torch.rand(2, 3, 4, 4) * 255, 100, 15, 3, valid=invalid, connectivity=connectivity)
    loss = loss + pairwise_loss(logits, kernel, valid=invalid)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_soft_distillation_is_zero_for_a_perfect_student_and_positive_otherwise():
    logits = torch.randn(1, 3, 4, 4)
    assert soft_distillation(logits, torch.softmax(logits, 1)).abs() < 1e-6
    assert soft_distillation(torch.zeros_like(logits), torch.softmax(logits * 3, 1)) > 0.01


@pytest.mark.parametrize("connectivity", ["local", "full"])
def test_pairwise_loss_is_zero_for_constant_predictions_and_respects_colour_edges(connectivity):
    img = torch.zeros(1, 3, 8, 8)
    img[:, 0, :, :4] = 200.0
    kernel = pairwise_kernel(img, sxy=100, srgb=15, window=3, connectivity=connectivity)
    flat = torch.zeros(1, 2, 8, 8)
    flat[:, 0] = 20.0
    assert pairwise_loss(flat, kernel) < 1e-6
    along_edge = torch.zeros(1, 2, 8, 8)
    along_edge[:, 0, :, :4] = 20.0
    along_edge[:, 1, :, 4:] = 20.0  # the label changes exactly at the colour edge
    across_region = torch.zeros(1, 2, 8, 8)
    across_region[:, 0, :4] = 20.0
    across_region[:, 1, 4:] = 20.0  # the label changes inside uniformly coloured regions
    cheap = pairwise_loss(along_edge, kernel)
    costly = pairwise_loss(across_region, kernel)
    assert cheap < 1e-3 < costly


def test_full_pairwise_loss_matches_the_pairwise_sum():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 3, 4) * 255
    logits = torch.randn(2, 3, 3, 4)
    kernel = pairwise_kernel(img, sxy=5, srgb=60, connectivity="full")  # (2, 12, 12)
    p = torch.softmax(logits, 1).flatten(2)  # (2, 3, 12)
    agree = torch.einsum("bki,bkj->bij", p, p)
    expected = (kernel * (1 - agree)).sum(2).mean()
    assert torch.allclose(pairwise_loss(logits, kernel), expected, atol=1e-6)
    with pytest.raises(ValueError, match="connectivity"):
        pairwise_kernel(img, sxy=5, srgb=60, connectivity="dense")


def test_classification_loss_prefers_the_right_labels():
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    assert classification_loss(torch.tensor([[5.0, -5.0, 5.0]]), labels) < classification_loss(
        torch.tensor([[-5.0, 5.0, -5.0]]), labels
    )
