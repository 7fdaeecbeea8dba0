"""Loss terms of ASDT (pure tensor functions).

Every segmentation loss returns a graph-connected zero when its label holds no usable pixel, so a batch
whose pseudo labels are all ignore never produces NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cam import IGNORE_INDEX
from .crf import full_affinity, local_affinity, resolve_connectivity
from .crf_attention import GaussianAttention, attention_pairwise_loss, bilateral_attention, position_features

CE_COMBINES = ("mean", "sum")  # how balanced_cross_entropy joins its background and foreground means


def classification_loss(class_logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of the CAM branch: (B, C) logits, (B, C) multi-hot labels -> scalar."""
    return F.multilabel_soft_margin_loss(class_logits, image_labels)


def balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    has_background: bool = True,
    ignore_index: int = IGNORE_INDEX,
    balanced: bool = True,
    combine: str = "mean",
) -> torch.Tensor:
    """Cross-entropy averaged over background and foreground pixels separately, then over the two
    (``combine="mean"``) or summed (``"sum"``: the released code's ``bg_celoss + fg_celoss``, twice as strong).

    Background dominates pseudo labels; balancing keeps foreground classes from being drowned out. Without a
    background class, or with ``balanced=False``, it is the plain mean over labelled pixels. A group without
    labelled pixels is left out (the released code's mean over no pixel would be NaN).

    Args:
        logits: (B, K, h, w); labels: (B, h, w) long with ``ignore_index``.
    Returns:
        scalar loss (0 with gradient when no pixel is labelled).
    """
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    labelled = labels != ignore_index
    groups = [labelled] if not (has_background and balanced) else [labelled & (labels == 0), labelled & (labels > 0)]
    if combine not in CE_COMBINES:
        raise ValueError(f"combine must be one of {', '.join(CE_COMBINES)}, got {combine!r}")
    means = [per_pixel[g].mean() for g in groups if g.any()]
    if not means:
        return logits.sum() * 0.0
    stacked = torch.stack(means)
    return stacked.sum() if combine == "sum" else stacked.mean()


def soft_distillation(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    valid: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) averaged over valid pixels, scaled by ``temperature**2``.

    Args:
        student_logits: (B, K, h, w); teacher_probs: (B, K, h, w) (detached); valid: (B, h, w) bool.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, teacher_probs, reduction="none").sum(1)  # (B, h, w)
    if valid is not None:
        kl = kl[valid]
    if kl.numel() == 0:
        return student_logits.sum() * 0.0
    return kl.mean() * temperature**2


def pairwise_kernel(
    image: torch.Tensor,
    sxy: float,
    srgb: float,
    window: int = 5,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
    connectivity: str = "local",
    out: torch.Tensor | None = None,
) -> torch.Tensor | GaussianAttention:
    """The bilateral kernel of ``pairwise_loss`` (no gradient needed; one kernel serves R and S).

    Args:
        image: (B, 3, h, w) RGB 0..255 at the logits' resolution; valid: (B, h, w) bool.
        connectivity: ``"local"`` (a ``window x window`` neighbourhood), ``"full"`` (every pixel pair),
            ``"attention"`` (every pixel pair, linear memory) or ``"auto"`` (full where it fits, else attention).
        out: optional buffer for the full kernel (``method.crf.full_affinity``).
    Returns:
        (B, window*window, h, w) local or (B, h*w, h*w) full weights (``method.crf``), or the attention form of
        the full kernel (``method.crf_attention.GaussianAttention``).
    """
    connectivity = resolve_connectivity(connectivity, image.shape[0], image.shape[2], image.shape[3])
    if connectivity == "dense":
        raise ValueError(
            "the pairwise loss has no dense (pydensecrf2) connectivity: use full, attention, auto or local"
        )
    if connectivity == "attention":
        return bilateral_attention(image, sxy, srgb, pixel_step, valid)
    if connectivity == "full":
        return full_affinity(image, sxy, srgb, pixel_step, valid, out=out)
    return local_affinity(image, window, sxy, srgb, pixel_step, valid)


def pairwise_loss(
    logits: torch.Tensor, kernel: torch.Tensor | GaussianAttention, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """CRF (gated-CRF / dense-CRF-loss style) loss: pixels alike in colour and place should agree.

    ``mean_i sum_j k_ij (1 - <p_i, p_j>)`` over valid pixels ``i``, with the normalised bilateral kernel ``k`` of
    ``pairwise_kernel``: over each pixel's window (local) or over every other pixel (full, attention).

    Args:
        logits: (B, K, h, w); kernel: from ``pairwise_kernel`` at the same resolution; valid: (B, h, w) bool.
    """
    b, k, h, w = logits.shape
    probs = torch.softmax(logits, 1)
    if isinstance(kernel, GaussianAttention):  # the full kernel's sums, by attention (linear memory)
        loss = attention_pairwise_loss(probs, kernel)
    elif kernel.dim() == 3:  # full: (B, N, N)
        flat = probs.flatten(2)  # (B, K, N)
        agreement = (flat * torch.matmul(flat, kernel.transpose(1, 2))).sum(1)  # sum_j k_ij <p_i, p_j>
        loss = (kernel.sum(2) - agreement).view(b, h, w)
    else:
        window = math.isqrt(kernel.shape[1])
        neighbours = F.unfold(probs, window, padding=window // 2).view(b, k, window * window, h, w)
        agreement = (neighbours * probs[:, :, None]).sum(1)  # (B, N, h, w)
        loss = (kernel * (1 - agreement)).sum(1)  # (B, h, w)
    if valid is not None:
        loss = loss[valid]
    if loss.numel() == 0:
        return logits.sum() * 0.0
    return loss.mean()


def dense_energy_loss(
    probs: torch.Tensor,
    rgb: torch.Tensor,
    roi: torch.Tensor,
    labels: torch.Tensor,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale: float = 0.5,
    pixel_step: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The released code's gated dense-CRF energy loss (Tang et al.'s dense CRF loss, ``DenseEnergyLoss.py``).

    At ``scale`` of the label grid (images, ROI and labels nearest, probabilities bilinear, as the released
    ``F.interpolate(..., scale_factor=scale)`` calls): ``E = -(1/B) sum_i g_i sum_k S_ik sum_j W_ij S_jk`` with
    ``S = probs * roi``, the exact Gaussian kernel ``W_ij = exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2
    srgb^2)`` over every pair, self included (the released code's permutohedral lattice approximates it), and the
    gate ``g = max(0, roi - max_k probs)`` on labelled pixels, 1 on ignored ones. Its gradient is the released
    backward's, ``-(2/B) g W S`` on the ROI with the gate held constant (not the exact derivative of ``E``).
    Memory linear in the pixels (``crf_attention``); no weight applied (the released 1e-7 is ``loss.pairwise``).

    Args:
        probs: (B, K, H, W) softmax; rgb: (B, 3, H, W) RGB 0..255; roi: (B, H, W) bool (not padding);
        labels: (B, H, W) long pseudo labels with ``ignore_index``; sigma_xy: in image pixels;
        pixel_step: image pixels per label pixel.
    Returns:
        scalar.
    """
    b = probs.shape[0]
    roi_f = roi[:, None].float()
    labels_f = labels[:, None].float()
    if scale != 1:
        rgb = F.interpolate(rgb.float(), scale_factor=scale)
        probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
        roi_f = F.interpolate(roi_f, scale_factor=scale)
        labels_f = F.interpolate(labels_f, scale_factor=scale)
    _b, k, h, w = probs.shape
    unlabelled = labels_f.long() == ignore_index  # (B, 1, h, w)
    gate = (roi_f - probs.detach().amax(1, keepdim=True)).masked_fill(unlabelled, 1.0).clamp_min(0)
    seg = (probs * roi_f).float()
    feats = position_features(b, h, w, sigma_xy * scale, pixel_step, probs.device, torch.float32)
    feats = torch.cat([feats, rgb.float().flatten(2).transpose(1, 2) / sigma_rgb], 2)
    flat = seg.detach().flatten(2).transpose(1, 2)  # (B, N, K)
    sums = GaussianAttention(feats).sums(flat).transpose(1, 2).reshape(b, k, h, w)
    gated = sums * gate  # (B, K, h, w), constant
    energy = -(seg.detach() * gated).sum() / b
    surrogate = -2.0 * (seg * gated).sum() / b  # the released backward: -2 g W S / B on the ROI
    return energy + (surrogate - surrogate.detach())
