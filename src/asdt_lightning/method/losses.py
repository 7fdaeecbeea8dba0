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
from .crf_attention import GaussianAttention, attention_pairwise_loss, bilateral_attention


def classification_loss(class_logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of the CAM branch: (B, C) logits, (B, C) multi-hot labels -> scalar."""
    return F.multilabel_soft_margin_loss(class_logits, image_labels)


def balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    has_background: bool = True,
    ignore_index: int = IGNORE_INDEX,
    balanced: bool = True,
) -> torch.Tensor:
    """Cross-entropy averaged over background and foreground pixels separately, then over the two.

    Background dominates pseudo labels; balancing keeps foreground classes from being drowned out. Without a
    background class, or with ``balanced=False``, it is the plain mean over labelled pixels.

    Args:
        logits: (B, K, h, w); labels: (B, h, w) long with ``ignore_index``.
    Returns:
        scalar loss (0 with gradient when no pixel is labelled).
    """
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    labelled = labels != ignore_index
    groups = [labelled] if not (has_background and balanced) else [labelled & (labels == 0), labelled & (labels > 0)]
    means = [per_pixel[g].mean() for g in groups if g.any()]
    if not means:
        return logits.sum() * 0.0
    return torch.stack(means).mean()


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
