import pytest
import torch

from asdt_lightning.method.crf import CRFParams, local_affinity, local_crf


def two_colour_image(h=12, w=12):
    img = torch.zeros(1, 3, h, w)
    img[:, 0, :, : w // 2] = 220.0  # left half red
    img[:, 2, :, w // 2 :] = 220.0  # right half blue
    return img


def test_affinity_rows_sum_to_one_and_ignore_invalid_pixels():
    img = two_colour_image()
    valid = torch.ones(1, 12, 12, dtype=torch.bool)
    valid[:, :, -3:] = False
    k = local_affinity(img, window=5, sxy=3.0, srgb=13.0, valid=valid)
    assert k.shape == (1, 25, 12, 12)
    sums = k.sum(1)
    assert torch.allclose(sums[valid], torch.ones(()), atol=1e-5)
    assert torch.all(k[:, 12] == 0)  # centre (self) excluded
    # a valid pixel beside the invalid band gives it no weight: column 8's right neighbours (cols 9, 10) are invalid
    row = k[0, :, 6, 8].view(5, 5)
    assert torch.all(row[:, 3:] == 0)


def test_bilateral_kernel_does_not_cross_a_colour_edge():
    k = local_affinity(two_colour_image(), window=3, sxy=80.0, srgb=13.0)
    # pixel (5, 5) is the last red column; its right neighbours are blue
    weights = k[0, :, 5, 5].view(3, 3)
    assert weights[:, 2].max() < 1e-6
    assert weights[:, 0].min() > 0.1


def test_crf_spreads_labels_inside_a_region_but_not_across_the_edge():
    img = two_colour_image()
    probs = torch.full((1, 2, 12, 12), 0.5)
    probs[0, :, 6, 2] = torch.tensor([0.99, 0.01])  # one confident class-0 seed on the left
    probs[0, :, 6, 9] = torch.tensor([0.01, 0.99])  # one confident class-1 seed on the right
    out = local_crf(img, probs, CRFParams(iterations=20, window=7, bilateral_srgb=13.0), pixel_step=1.0)
    labels = out.argmax(1)[0]
    assert torch.all(labels[:, :6] == 0)
    assert torch.all(labels[:, 6:] == 1)
    assert torch.allclose(out.sum(1), torch.ones(1, 12, 12), atol=1e-5)


def test_crf_keeps_disallowed_labels_at_zero_and_zero_iterations_is_the_unary():
    img = two_colour_image()
    probs = torch.softmax(torch.randn(2, 3, 12, 12), 1)
    allowed = torch.tensor([[True, False, True], [True, True, True]])
    out = local_crf(img.expand(2, -1, -1, -1), probs, CRFParams(iterations=5), allowed=allowed)
    assert torch.all(out[0, 1] == 0)
    same = local_crf(img.expand(2, -1, -1, -1), probs, CRFParams(iterations=0))
    assert torch.allclose(same, probs, atol=1e-5)


def test_crf_with_no_allowed_label_falls_back_to_all():
    probs = torch.softmax(torch.randn(1, 3, 12, 12), 1)
    out = local_crf(two_colour_image(), probs, CRFParams(iterations=2), allowed=torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("window", [3, 5])
def test_shift_and_unfold_message_passing_agree(window):
    from asdt_lightning.method.crf import message_passing

    torch.manual_seed(0)
    q = torch.softmax(torch.randn(2, 4, 7, 9), 1)
    kernel = torch.rand(2, window * window, 7, 9)
    kernel[:, (window * window) // 2] = 0.0
    shift = message_passing(q, kernel, window, "shift")
    unfold = message_passing(q, kernel, window, "unfold")
    assert torch.allclose(shift, unfold, atol=1e-6)
    # a hand-checked entry: pixel (3, 4) receives its right neighbour's marginals with that offset's weight
    only_right = torch.zeros_like(kernel)
    only_right[:, (window // 2) * window + window // 2 + 1] = 1.0
    assert torch.allclose(message_passing(q, only_right, window, "shift")[:, :, 3, 4], q[:, :, 3, 5])
    with pytest.raises(ValueError, match="unknown"):
        message_passing(q, kernel, window, "dense")
