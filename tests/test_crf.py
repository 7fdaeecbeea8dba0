import pytest
import torch

from asdt_lightning.method.crf import (
    CRFParams,
    check_full_kernel_size,
    crf_kernel,
    full_affinity,
    kernel_buffer,
    local_affinity,
    mean_field,
    mean_field_crf,
)


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
    # each row is divided by its sum plus the pixel's own weight 1: inside a uniform region, s / (s + 1) for the
    # spatial Gaussian's sum s over the window
    r = torch.arange(-2, 3.0)
    s = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 3.0**2)).sum() - 1
    sums = k.sum(1)
    assert torch.allclose(sums[0, 5, 3], s / (s + 1), atol=1e-5)
    assert torch.all(sums[valid] < 1) and torch.all(sums[valid] > 0.5)
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


@pytest.mark.parametrize("connectivity", ["local", "full"])
def test_crf_spreads_labels_inside_a_region_but_not_across_the_edge(connectivity):
    img = two_colour_image()
    probs = torch.full((1, 2, 12, 12), 0.5)
    probs[0, :, 6, 2] = torch.tensor([0.99, 0.01])  # one confident class-0 seed on the left
    probs[0, :, 6, 9] = torch.tensor([0.01, 0.99])  # one confident class-1 seed on the right
    params = CRFParams(iterations=20, window=7, bilateral_srgb=13.0, connectivity=connectivity)
    out = mean_field_crf(img, probs, params, pixel_step=1.0)
    labels = out.argmax(1)[0]
    assert torch.all(labels[:, :6] == 0)
    assert torch.all(labels[:, 6:] == 1)
    assert torch.allclose(out.sum(1), torch.ones(1, 12, 12), atol=1e-5)


@pytest.mark.parametrize("connectivity", ["local", "full"])
def test_crf_keeps_disallowed_labels_at_zero_and_zero_iterations_is_the_unary(connectivity):
    img = two_colour_image()
    probs = torch.softmax(torch.randn(2, 3, 12, 12), 1)
    allowed = torch.tensor([[True, False, True], [True, True, True]])
    params = CRFParams(iterations=5, connectivity=connectivity)
    out = mean_field_crf(img.expand(2, -1, -1, -1), probs, params, allowed=allowed)
    assert torch.all(out[0, 1] == 0)
    same = mean_field_crf(img.expand(2, -1, -1, -1), probs, CRFParams(iterations=0, connectivity=connectivity))
    assert torch.allclose(same, probs, atol=1e-5)


@pytest.mark.parametrize("connectivity", ["local", "full"])
def test_crf_with_no_allowed_label_falls_back_to_all(connectivity):
    probs = torch.softmax(torch.randn(1, 3, 12, 12), 1)
    params = CRFParams(iterations=2, connectivity=connectivity)
    out = mean_field_crf(two_colour_image(), probs, params, allowed=torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("connectivity", ["local", "full", "attention"])
def test_mean_field_on_each_images_allowed_classes_only_equals_iterating_all_of_them(connectivity, monkeypatch):
    import asdt_lightning.method.crf as crf

    torch.manual_seed(0)
    img = torch.rand(3, 3, 10, 10) * 255
    probs = torch.softmax(torch.randn(3, 6, 10, 10) * 3, 1)
    allowed = torch.zeros(3, 6, dtype=torch.bool)
    allowed[0, [0, 4]] = True  # background + one class
    allowed[1, [0, 1, 2, 5]] = True  # the most classes: 4 of 6 iterated
    allowed[2, [3]] = True  # one class alone (no background)
    assert crf.allowed_subset(allowed).tolist() == [[0, 4, 1, 2], [0, 1, 2, 5], [3, 0, 1, 2]]
    params = CRFParams(iterations=6, connectivity=connectivity, bilateral_srgb=13.0)
    kernel = crf_kernel(img, params)
    subset = mean_field(probs, kernel, params, allowed=allowed)
    monkeypatch.setattr(crf, "allowed_subset", lambda allowed: None)  # iterate all 6 classes, as before
    every = mean_field(probs, kernel, params, allowed=allowed)
    assert torch.allclose(subset, every, atol=1e-6)
    assert torch.all(subset[~allowed[:, :, None, None].expand_as(subset)] == 0)
    assert torch.allclose(subset.sum(1), torch.ones(3, 10, 10), atol=1e-5)
    assert crf.allowed_subset(torch.ones(2, 6, dtype=torch.bool)) is None  # nothing to leave out


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


def brute_force_kernel(image, sxy, srgb, pixel_step):
    """Reference: every pair's weight by loops over explicit coordinates, normalised by sum + 1."""
    b, _, h, w = image.shape
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 2).double()
    pos = pos * pixel_step
    out = torch.zeros(b, h * w, h * w, dtype=torch.float64)
    for n in range(b):
        rgb = image[n].flatten(1).T.double()
        for i in range(h * w):
            d = -((pos - pos[i]) ** 2).sum(1) / (2 * sxy**2)
            if srgb is not None:
                d = d - ((rgb - rgb[i]) ** 2).sum(1) / (2 * srgb**2)
            row = d.exp()
            row[i] = 0.0
            out[n, i] = row / (row.sum() + 1.0)
    return out


def test_full_affinity_matches_a_brute_force_reference():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 4, 5) * 255
    for sxy, srgb, step in [(3.0, None, 2.0), (80.0, 13.0, 4.0), (83.0, 60.0, 1.0)]:
        got = full_affinity(image, sxy, srgb, step)
        assert got.shape == (2, 20, 20)
        expected = brute_force_kernel(image, sxy, srgb, step).float()
        assert torch.allclose(got, expected, atol=1e-6), (sxy, srgb)


def test_full_affinity_is_exact_even_when_float32_matmuls_may_be_reduced_precision():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 4, 5) * 255
    expected = brute_force_kernel(image, 83.0, 5.0, 2.0).float()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # what many Lightning users set on GPUs (TF32 / bf16 matmuls)
    try:
        assert torch.allclose(full_affinity(image, 83.0, 5.0, 2.0), expected, atol=1e-6)
        assert torch.get_float32_matmul_precision() == "medium"  # restored after the kernel
    finally:
        torch.set_float32_matmul_precision(previous)


def test_full_affinity_ignores_invalid_pixels_and_refuses_huge_grids():
    image = two_colour_image(6, 6)
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    valid[:, :, -2:] = False
    k = full_affinity(image, 80.0, 13.0, valid=valid).view(1, 6, 6, 6, 6)  # [receiver y, x, sender y, x]
    assert torch.all(k[0, :, :4, :, -2:] == 0) and torch.all(k[0, :, -2:, :, :4] == 0)  # no valid-invalid weight
    assert torch.all(k[0, :, :4].sum((-1, -2)) > 0)
    # the valid pixels' weights are those of the valid part of the image alone
    alone = full_affinity(image[..., :4].contiguous(), 80.0, 13.0).view(1, 6, 4, 6, 4)
    assert torch.allclose(k[0, :, :4, :, :4], alone[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lower label_upsample or the crop size") as error:
        check_full_kernel_size(8, 256, 256)
    assert "model." not in str(error.value)  # a Python argument, not a config path


def test_full_crf_reaches_across_the_image_where_a_small_window_cannot():
    # one confident seed at the left end of a long uniform strip; the rest of the strip is undecided
    img = torch.zeros(1, 3, 3, 24)
    probs = torch.full((1, 2, 3, 24), 0.5)
    probs[0, :, 1, 0] = torch.tensor([0.01, 0.99])
    probs[0, :, :, 12:] = torch.tensor([0.45, 0.55])[:, None, None]  # a faint lean towards class 1 far away
    probs[0, :, :, :12] = torch.tensor([0.55, 0.45])[:, None, None]
    probs[0, :, 1, 0] = torch.tensor([0.01, 0.99])
    full = mean_field_crf(img, probs, CRFParams(iterations=10, connectivity="full", gaussian_compat=0))
    local = mean_field_crf(img, probs, CRFParams(iterations=10, window=3, gaussian_compat=0, connectivity="local"))
    # the fully connected CRF lets the whole strip agree; with a 3x3 window the halves stay apart
    assert full.argmax(1).unique().numel() == 1
    assert local.argmax(1).unique().numel() == 2


def test_one_kernel_serves_several_unaries():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 6, 6) * 255
    probs = torch.softmax(torch.randn(2, 3, 6, 6), 1)
    for connectivity in ("local", "full"):
        params = CRFParams(iterations=4, window=5, connectivity=connectivity)
        kernel = crf_kernel(image, params, 2.0)
        shared = mean_field(probs, kernel, params)
        assert torch.allclose(shared, mean_field_crf(image, probs, params, 2.0), atol=1e-6)


def test_unknown_connectivity_is_refused():
    with pytest.raises(ValueError, match="connectivity"):
        CRFParams(connectivity="lattice")


def test_full_kernels_built_in_a_buffer_equal_fresh_ones_and_reuse_its_memory():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 5, 6) * 255
    params = CRFParams(bilateral_sxy=30.0, bilateral_srgb=20.0)
    buffers: dict[str, torch.Tensor] = {}
    first = kernel_buffer(buffers, "k", image)
    assert first.shape == (2, 30, 30)
    kernel = crf_kernel(image, params, 2.0, out=first)
    assert kernel.data_ptr() == first.data_ptr()
    assert torch.equal(kernel, crf_kernel(image, params, 2.0))
    assert kernel_buffer(buffers, "k", image) is first  # same grid: the same memory
    assert kernel_buffer(buffers, "k", image[:1]).shape == (1, 30, 30)  # another batch size: a new buffer
    assert torch.equal(
        full_affinity(image, 30.0, 20.0, 2.0, out=torch.empty(3, 3)), full_affinity(image, 30.0, 20.0, 2.0)
    )
