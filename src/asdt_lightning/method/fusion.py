"""Inference-time tensor functions: branch fusion, CAM scores as probabilities, test-time augmentation, labels.

Shapes: B images, C foreground classes, K = C + has_background labels, (H, W) the image resolution. Used by
pseudo-mask export and evaluation alike, so both score exactly the same maps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX

BRANCH_CHOICES = ("fused", "refine", "student", "cam")
FUSION_CHOICES = ("max", "mean", "product")


def cam_probabilities(norm_cams: torch.Tensor, image_labels: torch.Tensor, bg_threshold: float | None) -> torch.Tensor:
    """Normalised CAMs as a per-pixel distribution over labels: (B, C, H, W) -> (B, K, H, W).

    Background (when ``bg_threshold`` is not None) scores the constant threshold, each present class its CAM,
    absent classes 0 (negative CAMs too); scores are divided by their sum, so a CRF can refine them. Their argmax
    is the CAM baseline's label map (``method.cam.cam_label_maps``, which scores CAMs) except where the division
    rounds two scores to a tie, where no present class has a positive CAM (no background), or below a threshold
    of 1e-6.
    """
    present = (image_labels > 0)[:, :, None, None].to(norm_cams.dtype)
    scores = norm_cams.clamp_min(0) * present
    if bg_threshold is not None:
        scores = torch.cat([torch.full_like(scores[:, :1], max(bg_threshold, 1e-6)), scores], 1)
    return scores / scores.sum(1, keepdim=True).clamp_min(1e-6)


def fuse_branches(refine: torch.Tensor, student: torch.Tensor, fusion: str = "max") -> torch.Tensor:
    """(B, K, H, W) softmax of R and S -> (B, K, H, W) fused scores, renormalised to sum to 1 per pixel.

    ``max``: element-wise maximum (the released code's inference); ``mean``: average; ``product``: geometric
    mean. The argmax of ``max`` is unchanged by the renormalisation.
    """
    if fusion == "max":
        fused = torch.maximum(refine, student)
    elif fusion == "mean":
        fused = (refine + student) / 2
    elif fusion == "product":
        fused = (refine.clamp_min(1e-8) * student.clamp_min(1e-8)).sqrt()
    else:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSION_CHOICES}")
    return fused / fused.sum(1, keepdim=True).clamp_min(1e-8)


def branch_scores(
    outputs: Mapping[str, torch.Tensor],
    image_labels: torch.Tensor,
    branch: str,
    fusion: str = "max",
    cam_threshold: float | None = None,
) -> torch.Tensor:
    """One branch's (B, K, H, W) per-pixel distribution from ``cam`` (normalised CAMs), ``refine`` and ``student``.

    ``cam_threshold``: the CAM branch's constant background score (None: no background class).
    """
    if branch == "fused":
        return fuse_branches(outputs["refine"], outputs["student"], fusion)
    if branch in ("refine", "student"):
        return outputs[branch]
    if branch == "cam":
        return cam_probabilities(outputs["cam"], image_labels, cam_threshold)
    raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCH_CHOICES}")


def labels_from_scores(scores: torch.Tensor, confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) per-pixel distributions -> (B, H, W) long labels and (B, H, W) confidence in [0, 1].

    Confidence is the winning label's share of the pixel's scores; pixels below ``confidence`` get
    ``IGNORE_INDEX``.
    """
    scores = scores / scores.sum(1, keepdim=True).clamp_min(1e-8)
    conf, labels = scores.max(1)
    if confidence > 0:
        labels = labels.masked_fill(conf < confidence, IGNORE_INDEX)
    return labels, conf


def tta_outputs(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[str, torch.Tensor]:
    """Average a model's per-branch maps over input scales and horizontal flips.

    Args:
        predict: (B, 3, h, w) images -> dict of (B, *, h, w) maps at the input resolution.
        images: (B, 3, H, W) normalised images.
    Returns:
        dict of (B, *, H, W) maps, each the mean over ``len(scales) * (1 + flip)`` passes. ``cam`` maps are
        re-normalised by their spatial maximum after averaging (each class peaks at 1, as from one pass).
    """
    size = images.shape[-2:]
    total: dict[str, torch.Tensor] = {}
    passes = 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            out = predict(scaled.flip(-1) if flipped else scaled)
            for key, value in out.items():
                value = value.flip(-1) if flipped else value
                if value.shape[-2:] != size:
                    value = F.interpolate(value, size, mode="bilinear", align_corners=False)
                total[key] = total[key] + value if key in total else value
            passes += 1
    merged = {key: value / passes for key, value in total.items()}
    if "cam" in merged and passes > 1:
        cam = merged["cam"]
        merged["cam"] = cam / cam.flatten(2).amax(2)[:, :, None, None].clamp_min(1e-5)
    return merged
