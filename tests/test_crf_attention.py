"""connectivity="attention": the fully connected CRF and pairwise loss without an N x N kernel (method.crf_attention).

Checked against the exact (B, N, N) ``full`` connectivity where both fit, against pydensecrf2 on real photos at
161 x 161 and 321 x 321, the pairwise loss's gradients against finite differences, and the connectivity as the
config selects it (teacher A's and B's CRFs, the pairwise loss, ``auto``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asdt_lightning.lit.inference import CRFKernels, local_crf
from asdt_lightning.method.asdt_loss import ASDTLoss, LossWeights, PairwiseParams, TeacherBParams
from asdt_lightning.method.cam import TeacherAParams
from asdt_lightning.method.crf import (
    AUTO_FULL_MAX_BYTES,
    INFERENCE_CRF,
    CRFParams,
    DenseCRFImage,
    crf_kernel,
    full_affinity,
    mean_field,
    mean_field_crf,
    pydensecrf_available,
    resolve_connectivity,
)
from asdt_lightning.method.crf_attention import (
    AttentionCRFKernel,
    GaussianAttention,
    SeparableGaussian,
    attention_crf_kernel,
    bilateral_attention,
    position_features,
)
from asdt_lightning.method.losses import pairwise_kernel, pairwise_loss
from asdt_lightning.params import params_from

TEACHER_A = CRFParams()  # the released code's teacher-A dense CRF (srgb 13, compat 10)
TEACHER_B = dataclasses.replace(INFERENCE_CRF, connectivity="full")  # its inference CRF (srgb 5, compat 4)
PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128_train2017" / "VOC2012"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, loaded machine two threads of SDPA wait for each other (4x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges replicated."""
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def cam_like(regions: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(B, K, H, W) CAM-like probabilities: each region's class blurred, a smooth random field on top."""
    g = torch.Generator().manual_seed(seed)
    h = regions.shape[-1]
    onehot = F.one_hot(regions, k).permute(0, 3, 1, 2).float()
    probs = blur(onehot, h / 20) * 0.8 + 0.2 / k
    probs = probs * torch.exp(1.5 * blur(torch.randn(probs.shape, generator=g), h / 30))
    return probs / probs.sum(1, keepdim=True)


def synthetic_batch(b: int, h: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Different photo-like images (Voronoi regions of random colours, noise, slight blur) and CAM-like maps."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(b, 8, 2, generator=g) * h
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(h).float(), indexing="ij")
    d = (ys[None, None] - centres[..., 0, None, None]) ** 2 + (xs[None, None] - centres[..., 1, None, None]) ** 2
    cells = d.argmin(1)  # (B, H, W)
    colours = torch.rand(b, 8, 3, generator=g) * 200 + 25
    image = torch.stack([colours[i][cells[i]] for i in range(b)]).permute(0, 3, 1, 2)
    image = blur(image + torch.randn(image.shape, generator=g) * 8, 0.7).clamp(0, 255)
    classes = torch.randint(0, k, (b, 8), generator=g)
    regions = torch.stack([classes[i][cells[i]] for i in range(b)])
    return image, cam_like(regions, k, seed)


def full_message(kernel: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What ``mean_field`` adds to the logits with a full (B, N, N) kernel."""
    return torch.matmul(q.flatten(2), kernel.transpose(1, 2)).view_as(q)


# ------------------------------------------------------------------------------------- against full
@pytest.mark.parametrize("h", [24, 48])
@pytest.mark.parametrize("prune", [True, False])
def test_messages_equal_the_full_kernels(h, prune):
    image, probs = synthetic_batch(3, h, 5, seed=h)
    step = 321 / h  # a 321-px crop's label grid
    errors = {}
    for p in (TEACHER_A, TEACHER_B):
        # bilateral: the attention form of full_affinity (weights already scaled by compat)
        full = full_affinity(image, p.bilateral_sxy, p.bilateral_srgb, step, scale=p.bilateral_compat)
        att = bilateral_attention(
            image, p.bilateral_sxy, p.bilateral_srgb, step, weight=p.bilateral_compat, prune=prune
        )
        errors[f"bilateral srgb {p.bilateral_srgb}"] = (att.message(probs) - full_message(full, probs)).abs().max()
        row_sums = att.apply(torch.ones(3, h * h, 1))[..., 0]  # sum_{j != i} of the normalised weights
        assert torch.allclose(row_sums, full.sum(2), atol=1e-4 * p.bilateral_compat)
        # gaussian: separable, what the attention connectivity uses
        gauss = full_affinity(image[:1], p.gaussian_sxy, None, step, scale=p.gaussian_compat)
        ref = full_message(gauss.expand(3, -1, -1), probs)
        sep = SeparableGaussian(h, h, p.gaussian_sxy, step, p.gaussian_compat, image.device)
        errors["gaussian (separable)"] = (sep.message(probs) - ref).abs().max()
        # the whole CRF message, as mean_field adds it to the logits
        kernel = attention_crf_kernel(image, p, step, prune=prune)
        full_kernel = crf_kernel(image, p, step)
        errors[f"CRF srgb {p.bilateral_srgb}"] = (kernel.message(probs) - full_message(full_kernel, probs)).abs().max()
    for name, err in errors.items():
        assert err < 1e-3, (name, err)
    # the Gaussian as attention over positions alone works too, with less precision: sxy = 3 on a 321-px crop
    # spreads the features over +-53, so the float32 scores |f|^2 / 2 reach ~1400 and lose ~1e-4 each (x compat 3)
    feats = position_features(3, h, h, 3.0, step, image.device, torch.float32)
    as_attention = GaussianAttention(feats, 3.0, prune).message(probs)
    ref = full_message(full_affinity(image[:1], 3.0, None, step, scale=3.0).expand(3, -1, -1), probs)
    assert (as_attention - ref).abs().max() < 3e-3
    print(f"\n{h}x{h}, prune={prune}: max |message - full|: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))


@pytest.mark.parametrize("h", [24, 48])
def test_mean_field_labels_equal_full_with_and_without_the_allowed_mask(h):
    image, probs = synthetic_batch(3, h, 6, seed=10 + h)
    allowed = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 1]], dtype=torch.bool)
    step = 321 / h
    for p in (TEACHER_A, TEACHER_B):
        attention = dataclasses.replace(p, connectivity="attention")
        kernel = crf_kernel(image, attention, step)
        assert isinstance(kernel, AttentionCRFKernel)
        for mask in (None, allowed):
            ref = mean_field_crf(image, probs, p, step, allowed=mask)
            got = mean_field(probs, kernel, attention, allowed=mask)
            same = (got.argmax(1) == ref.argmax(1)).float().mean().item()
            assert same >= 0.995, same
            assert (got - ref).abs().max() < 1e-2
            if mask is not None:
                assert torch.all(got.masked_select(~mask[:, :, None, None]) == 0)
            print(f"\n{h}x{h} srgb {p.bilateral_srgb} allowed={mask is not None}: labels equal {100 * same:.2f}%")


def test_auto_picks_full_where_its_kernel_fits_and_attention_elsewhere():
    assert resolve_connectivity("auto", 4, 41, 41) == "full"  # 45 MB
    assert resolve_connectivity("auto", 4, 161, 161) == "attention"  # 10.7 GB
    assert resolve_connectivity("local", 4, 161, 161) == "local"
    n = int((AUTO_FULL_MAX_BYTES / 4) ** 0.25)
    assert (
        resolve_connectivity("auto", 1, n, n) == "full" and resolve_connectivity("auto", 1, n + 1, n + 1) == "attention"
    )
    image, _probs = synthetic_batch(2, 12, 3)
    auto = dataclasses.replace(TEACHER_A, connectivity="auto")
    assert crf_kernel(image, auto).dim() == 3  # (B, N, N)
    assert isinstance(pairwise_kernel(image, 100, 15, connectivity="auto"), torch.Tensor)
    big = torch.rand(1, 3, n + 1, n + 1) * 255  # building an attention kernel runs no attention pass: cheap
    # a CRF on the CPU: pydensecrf2 where installed (attention's N^2 is far too slow there), else attention
    expected = DenseCRFImage if pydensecrf_available() else AttentionCRFKernel
    assert isinstance(crf_kernel(big, auto), expected)
    assert isinstance(attention_crf_kernel(big, auto, 1.0), AttentionCRFKernel)
    assert resolve_connectivity("auto", 1, n + 1, n + 1, torch.device("cuda"), allow_dense=True) == "attention"
    assert isinstance(pairwise_kernel(big, 100, 15, connectivity="auto"), GaussianAttention)
    for connectivity in ("attention", "auto"):
        assert CRFParams(connectivity=connectivity).connectivity == connectivity
        assert PairwiseParams(connectivity=connectivity).connectivity == connectivity
    with pytest.raises(ValueError, match="attention"):
        CRFParams(connectivity="lattice")


def test_kernel_memory_is_linear_in_the_pixels_and_it_moves_between_devices():
    params = dataclasses.replace(TEACHER_A, connectivity="attention")
    sizes = {}
    for h in (32, 64):
        image, probs = synthetic_batch(2, h, 3)
        kernel = crf_kernel(image, params, 2.0)
        sizes[h] = kernel.nbytes
    assert sizes[64] < 4.5 * sizes[32] and sizes[64] < 2 * 64 * 64 * 64 * 4  # ~4x for 4x the pixels, not 16x
    moved = kernel.to("cpu")
    assert torch.equal(moved.message(probs), kernel.message(probs))
    # the batch's kernel cache at inference (lit.inference) sizes, moves and uses it like a tensor kernel
    kernels = CRFKernels()
    allowed = torch.tensor([[True, False, True], [True, True, False]])
    got = local_crf(image, probs, params, allowed, kernels)
    assert kernels.nbytes == kernels.get(image, params).nbytes and kernels.built == 1
    ref = local_crf(image, probs, TEACHER_A, allowed, CRFKernels())
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.995
    assert torch.equal(local_crf(image, probs, params, allowed, kernels.to("cpu")), got)


def test_bf16_autocast_outside_does_not_lower_the_scores_precision():
    image, probs = synthetic_batch(2, 24, 4)
    params = dataclasses.replace(TEACHER_B, connectivity="attention")
    ref = mean_field_crf(image, probs, params, 4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mean_field_crf(image, probs, params, 4.0)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------------------------ pairwise loss
def test_pairwise_loss_equals_full_with_invalid_pixels_and_its_gradient_too():
    image, _ = synthetic_batch(2, 20, 3, seed=3)
    valid = torch.ones(2, 20, 20, dtype=torch.bool)
    valid[1, :, -5:] = False
    logits = torch.randn(2, 4, 20, 20, requires_grad=True)
    full = pairwise_kernel(image, 100, 15, pixel_step=8.0, valid=valid, connectivity="full")
    ref = pairwise_loss(logits, full, valid)
    (grad_ref,) = torch.autograd.grad(ref, logits)
    for prune in (True, False):
        att = bilateral_attention(image, 100, 15, 8.0, valid, prune=prune)
        got = pairwise_loss(logits, att, valid)
        (grad,) = torch.autograd.grad(got, logits)
        assert abs(got.item() - ref.item()) < 1e-5 * max(1.0, ref.item())
        assert torch.allclose(grad, grad_ref, atol=1e-7, rtol=1e-3)
    assert isinstance(pairwise_kernel(image, 100, 15, connectivity="attention"), GaussianAttention)


@pytest.mark.parametrize("prune", [False, True])
def test_pairwise_loss_gradients_match_finite_differences(prune):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 4, 5) * 255
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[1, :, -1] = False
    # float64 scores and values (SDPA's CPU kernel takes them); a small chunk so pruning makes several blocks
    kernel = bilateral_attention(image, 30.0, 40.0, 2.0, valid, prune=prune, dtype=torch.float64, chunk=8)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pairwise_loss(x, kernel, valid), (logits,), fast_mode=prune)


# ----------------------------------------------------------------------------- against pydensecrf2
def photo_and_cams(name: str, size: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """A real photo resized to ``size`` (uint8 HWC) and CAM-like maps from its real mask, over its classes."""
    from PIL import Image

    image = np.array(Image.open(PHOTOS / "JPEGImages" / f"{name}.jpg").convert("RGB").resize((size, size)))
    mask = np.array(Image.open(PHOTOS / "SegmentationClass" / f"{name}.png").resize((size, size), Image.NEAREST))
    mask[mask == 255] = 0  # the boundary band: background
    ids, regions = np.unique(mask, return_inverse=True)
    regions = torch.from_numpy(regions.reshape(1, size, size)).long()
    return image, cam_like(regions, len(ids), seed)


def dense_agreement(names: list[str], size: int, params: CRFParams) -> list[float]:
    """Per photo: share of pixels where the attention CRF and pydensecrf2 give the same label (printed with the
    share pydensecrf2 changes from the maps' argmax, the pixels where the CRFs could disagree)."""
    from asdt_lightning.method.dense_crf import dense_crf_single

    step = 321 / size  # a 321-px crop's label grid; pydensecrf counts positions in label pixels
    attention = dataclasses.replace(params, connectivity="attention")
    scaled = dataclasses.replace(
        params, gaussian_sxy=params.gaussian_sxy / step, bilateral_sxy=params.bilateral_sxy / step
    )
    out = []
    for i, name in enumerate(names):
        image, probs = photo_and_cams(name, size, i)
        rgb = torch.from_numpy(image).float().permute(2, 0, 1)[None]
        ours = mean_field(probs, crf_kernel(rgb, attention, step), attention).argmax(1)[0].numpy()
        theirs = dense_crf_single(image, probs[0].numpy(), scaled).argmax(0)
        out.append(float((ours == theirs).mean()))
        changed = float((probs[0].argmax(0).numpy() != theirs).mean())
        print(f"\n{name} {size}x{size} srgb {params.bilateral_srgb}: equal {out[-1]:.4f}, changed {changed:.4f}")
    return out


def most_foreground(names: list[str]) -> str:
    """The photo whose mask has the largest share of object pixels (the most labels for a CRF to move)."""
    from PIL import Image

    def share(name: str) -> float:
        mask = np.array(Image.open(PHOTOS / "SegmentationClass" / f"{name}.png"))
        return float(((mask != 0) & (mask != 255)).mean())

    return max(names, key=share)


@pytest.fixture(scope="module")
def photos() -> list[str]:
    pytest.importorskip("pydensecrf.densecrf", reason="needs the optional pydensecrf2 package")
    if not (PHOTOS / "SegmentationClass").is_dir():
        pytest.skip(f"no real photos at {PHOTOS}")
    names = sorted(p.stem for p in (PHOTOS / "SegmentationClass").glob("*.png"))
    if len(names) < 3:
        pytest.skip(f"too few photos at {PHOTOS}")
    return names


# pydensecrf2 filters with the permutohedral lattice (an approximation of the Gaussian) and normalises symmetrically
# with the pixel's own weight in, D^-1/2 K D^-1/2; ``full`` (and so attention) by default divides each row by its sum
# and leaves the pixel out. The exact ``full`` CRF gives the same labels as attention here (100.00% at 161 x 161 on
# four photos) and so the same agreement with pydensecrf2. With the row normalisation teacher B agrees 99.2-99.97%,
# teacher A (wider colour kernel) 97.7-99.99% on four photos; ``normalization="symmetric"`` (pydensecrf2's, what
# voc_released / voc_paper use) brings teacher A to 99.6% on CAM-like maps at 41, 81 and 161: what remains is the
# lattice's approximation.
def test_labels_agree_with_pydensecrf_on_real_photos_at_161_teacher_b(photos):
    agree = dense_agreement(photos[:2], 161, TEACHER_B)
    assert min(agree) >= 0.99, agree


def test_labels_agree_with_pydensecrf_on_a_real_photo_at_161_teacher_a(photos):
    (row,) = dense_agreement(photos[:1], 161, TEACHER_A)
    (symmetric,) = dense_agreement(photos[:1], 161, dataclasses.replace(TEACHER_A, normalization="symmetric"))
    assert row >= 0.985 and symmetric >= 0.99 and symmetric > row, (row, symmetric)


def test_labels_agree_with_pydensecrf_on_a_real_photo_at_321(photos):
    # one of teacher B's ten iterations (each is 4-7 s of attention at 321 x 321 on one core), on the photo with the
    # most object pixels. (Ten iterations: 98.6%, teacher A's 95.4%, with messages within 7e-4 of float64 exact
    # ones on 1000 sampled pixels: the models' differences above add up over the iterations.)
    (agree,) = dense_agreement([most_foreground(photos[:10])], 321, dataclasses.replace(TEACHER_B, iterations=1))
    assert agree >= 0.99, agree


# ------------------------------------------------------------------------------------------ by config
CHOSEN = {"teacher_a.crf": "attention", "teacher_b.crf": "attention", "pairwise": "attention"}


def test_config_selects_attention_for_both_teachers_and_the_pairwise_loss_with_full_s_results():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        defaults = compose("train").model
        chosen = compose("train", overrides=[f"model.{k}.connectivity={v}" for k, v in CHOSEN.items()]).model
    results = {}
    for name, model in (("full", defaults), ("attention", chosen)):
        model = OmegaConf.to_container(model, resolve=True)
        teacher_a = params_from(TeacherAParams, model["teacher_a"], "model.teacher_a")
        teacher_b = params_from(TeacherBParams, model["teacher_b"], "model.teacher_b")
        pairwise = params_from(PairwiseParams, model["pairwise"], "model.pairwise")
        connectivities = (teacher_a.crf.connectivity, teacher_b.crf.connectivity, pairwise.connectivity)
        assert connectivities == (("full",) * 3 if name == "full" else tuple(CHOSEN.values()))  # defaults: full
        assert teacher_b.crf.bilateral_srgb == INFERENCE_CRF.bilateral_srgb  # B's other settings are kept
        results[name] = asdt_loss_terms(ASDTLoss(LossWeights(), teacher_a, teacher_b, pairwise))
    (labels_full, terms_full), (labels_att, terms_att) = results["full"], results["attention"]
    for ref, got in zip(labels_full, labels_att, strict=True):
        assert (ref == got).float().mean() >= 0.995
    for key, value in terms_full.items():
        assert abs(float(terms_att[key]) - float(value)) < 1e-3 * max(1.0, abs(float(value))), key


def asdt_loss_terms(loss: ASDTLoss) -> tuple[list[torch.Tensor], dict[str, torch.Tensor | float]]:
    """Teacher A's and B's labels and the logged loss terms of one B-step on a fixed batch (2 images, 3 classes)."""
    image, probs = synthetic_batch(2, 64, 4, seed=7)
    g = torch.Generator().manual_seed(7)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[1, :, -8:] = False
    image_labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    small = F.interpolate(probs, size=(16, 16), mode="area")
    cams = small[:, 1:] * 3
    refine = small.log() + 0.3 * torch.randn(2, 4, 16, 16, generator=g)
    student = refine + 0.3 * torch.randn(2, 4, 16, 16, generator=g)
    t = loss.teacher_targets(image, valid, image_labels, cams, refine)
    _total, terms = loss(image, valid, image_labels, cams, refine, student, torch.tensor(0.7), 10_000, 1)
    return [t.labels_a, t.target_b], terms


def test_symmetric_normalisation_is_pydensecrfs_and_the_same_in_full_and_attention():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 9, 11) * 255
    q = torch.softmax(torch.randn(2, 3, 9, 11), 1)
    p = CRFParams(normalization="symmetric", bilateral_sxy=20.0, gaussian_sxy=2.0)
    # by hand: K_ij = exp(-|f_i - f_j|^2 / 2) with self, n = (K 1)^-1/2, message = compat * n * (K (n q))
    pos = position_features(2, 9, 11, 1.0, 1.0, image.device, torch.float64)
    expected = 0
    for sxy, srgb, compat in ((2.0, None, p.gaussian_compat), (20.0, p.bilateral_srgb, p.bilateral_compat)):
        f = pos / sxy if srgb is None else torch.cat([pos / sxy, image.double().flatten(2).transpose(1, 2) / srgb], 2)
        k = torch.exp(-(torch.cdist(f, f) ** 2) / 2)
        n = k.sum(2, keepdim=True).rsqrt()
        expected = expected + compat * n * (k @ (n * q.double().flatten(2).transpose(1, 2)))
    expected = expected.transpose(1, 2).reshape(2, 3, 9, 11)
    full = crf_kernel(image, dataclasses.replace(p, connectivity="full"))
    message_full = torch.matmul(q.flatten(2), full.transpose(1, 2)).view_as(q)
    message_attention = crf_kernel(image, dataclasses.replace(p, connectivity="attention")).message(q)
    torch.testing.assert_close(message_full.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(message_attention.double(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="symmetric"):
        CRFParams(normalization="symmetric", connectivity="local")
    with pytest.raises(ValueError, match="normalization"):
        CRFParams(normalization="none")
