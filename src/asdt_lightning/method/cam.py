"""Class activation maps and teacher A's reliable pseudo labels (pure tensor functions).

Shapes: B images, C foreground classes, (h, w) the CAM / label resolution. Labels use ``IGNORE_INDEX``
(255) for unreliable pixels. With a background class, label 0 is background and class ``c`` is ``c + 1``;
without one (COCO-Stuff), class ``c`` is label ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX  # also importable from here, as before
from .crf import CRFParams, crf_kernel, mean_field

CAM_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # background scores the CAM is scored at
BACKGROUNDS = ("power", "otsu")  # how teacher A scores the background (TeacherAParams.background)


@dataclass(frozen=True)
class TeacherAParams:
    """How teacher A turns CAMs into reliable pseudo labels.

    Defaults: the command line's (``conf/model/asdt.yaml``); ``experiment=voc_paper`` sets the released code's
    ``alpha_high`` 32 and ``bg_score_threshold`` 0.8, which leave no background labels near the objects of a
    network trained from scratch."""

    alpha_low: float = 4.0  # background power of the conservative CRF (foreground labels come from it)
    alpha_high: float = 8.0  # background power of the generous CRF (background labels come from it); released: 32
    fg_percentile: float = 0.6  # keep a foreground pixel only if its CAM is above this quantile ...
    fg_min_cam: float = 0.1  # ... of its class's CAM values above this floor
    bg_score_threshold: float = 0.0  # keep a background pixel only if (1 - max_fg) ** alpha_high > this; released: 0.8
    crf_confidence: float = 0.8  # and only where the CRF's probability of the label is at least this
    crf: CRFParams = field(default_factory=CRFParams)
    background: str = "power"  # power: (1 - max cam) ** alpha_low/high; otsu: per-image powers (crossing_power)
    otsu_margin: float = 0.1  # otsu: conservative CRF's bg score meets the CAM at t + this, the generous at t - this

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if not 0 <= self.otsu_margin < 0.5:
            raise ValueError(f"otsu_margin must lie in [0, 0.5), got {self.otsu_margin}")


def merge_multiscale_cams(cams: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average CAMs computed at several input scales after resizing each to ``size``.

    Args:
        cams: list of (B, C, h_i, w_i) raw CAMs.
    Returns:
        (B, C, *size) averaged CAMs.
    """
    resized = [
        c if c.shape[-2:] == size else F.interpolate(c, size, mode="bilinear", align_corners=False) for c in cams
    ]
    return torch.stack(resized).mean(0)


def normalize_cams(cams: torch.Tensor, image_labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ReLU, keep only the image's classes, divide each map by its spatial maximum.

    Args:
        cams: (B, C, h, w) raw CAMs.
        image_labels: (B, C) multi-hot image labels.
    Returns:
        (B, C, h, w) CAMs in [0, 1]; absent classes are all zero.
    """
    cams = F.relu(cams) * (image_labels[:, :, None, None] > 0)
    peak = cams.flatten(2).amax(2)[:, :, None, None]
    return cams / (peak + eps)


def background_score(norm_cams: torch.Tensor, power: float | torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) normalised CAMs -> (B, 1, h, w) background score ``(1 - max_c cam_c) ** power``
    (``power``: a number or a (B, 1, 1, 1) tensor, one per image)."""
    if norm_cams.shape[1] == 0:
        return norm_cams.new_ones(norm_cams.shape[0], 1, *norm_cams.shape[2:])
    return (1 - norm_cams.amax(1, keepdim=True)).clamp_min(0) ** power


def cam_scores(norm_cams: torch.Tensor, has_background: bool, bg_power: float | torch.Tensor) -> torch.Tensor:
    """Per-label scores from normalised CAMs: (B, C, h, w) -> (B, K, h, w), K = C + has_background."""
    if not has_background:
        return norm_cams
    return torch.cat([background_score(norm_cams, bg_power), norm_cams], 1)


def otsu_thresholds(values: torch.Tensor, valid: torch.Tensor | None = None, bins: int = 64) -> torch.Tensor:
    """Otsu's threshold of each image's values in [0, 1]: the cut that maximises the between-class variance of
    the histogram (the middle of the gap where several cuts tie). (B, h, w) values, optional (B, h, w) bool valid
    -> (B,) thresholds (0.5 for an empty image)."""
    flat = values.flatten(1).float().clamp(0, 1)
    weight = torch.ones_like(flat) if valid is None else valid.flatten(1).float()
    index = (flat * bins).long().clamp_max(bins - 1)
    hist = torch.zeros(flat.shape[0], bins, device=flat.device).scatter_add_(1, index, weight)
    p = hist / hist.sum(1, keepdim=True).clamp_min(1)
    centres = (torch.arange(bins, device=flat.device, dtype=flat.dtype) + 0.5) / bins
    w0 = p.cumsum(1)
    mu0 = (p * centres).cumsum(1)
    between = (mu0[:, -1:] * w0 - mu0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    ties = between >= between.amax(1, keepdim=True) * (1 - 1e-6)  # an empty range between two modes ties
    first, last = ties.float().argmax(1), bins - 1 - ties.flip(1).float().argmax(1)
    thresholds = ((first + last).to(flat.dtype) / 2 + 1) / bins  # the middle of the tied cuts' range
    return torch.where(hist.sum(1) > 0, thresholds, torch.full_like(thresholds, 0.5))


def crossing_power(crossing: torch.Tensor) -> torch.Tensor:
    """The background power at which ``(1 - cam) ** power`` equals ``cam`` at ``cam = crossing``: where the
    background score and a class's CAM tie. (...) crossings, clamped to [0.02, 0.98] -> powers of that shape."""
    c = crossing.clamp(0.02, 0.98)
    return torch.log(c) / torch.log1p(-c)


def allowed_labels(image_labels: torch.Tensor, has_background: bool) -> torch.Tensor:
    """(B, C) multi-hot -> (B, K) bool: the labels a pixel of each image may take."""
    present = image_labels > 0
    if not has_background:
        return present
    return torch.cat([torch.ones_like(present[:, :1]), present], 1)


def predicted_image_labels(class_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C) classifier logits -> (B, C) multi-hot image labels: sigmoid score above ``threshold``, and at least
    the top class (every image holds one). What stands in for the image labels where there are none."""
    labels = (torch.sigmoid(class_logits.float()) > threshold).float()
    labels[torch.arange(len(labels), device=labels.device), class_logits.argmax(1)] = 1.0
    return labels


def cam_label_maps(
    norm_cams: torch.Tensor, image_labels: torch.Tensor, bg_thresholds: Sequence[float] | None
) -> torch.Tensor:
    """The CAM baseline's label maps at every background threshold: argmax over the image's classes, background
    where no class's CAM is above the threshold (background wins ties; among classes the first wins).

    Args:
        norm_cams: (B, C, h, w) normalised CAMs; image_labels: (B, C) multi-hot.
        bg_thresholds: T constant background scores, or ``None`` for datasets without background (T = 1: the
            argmax over the image's classes).
    Returns:
        (T, B, h, w) labels, uint8 (long when a label could exceed 254); one argmax for all thresholds.
    """
    present = (image_labels > 0)[:, :, None, None]
    scores = norm_cams.masked_fill(~present, -1.0)
    winner = scores.argmax(1)  # (B, h, w)
    dtype = torch.uint8 if scores.shape[1] < 255 else torch.long  # labels <= C stay below 255 (ignore)
    if bg_thresholds is None:
        return winner.to(dtype)[None]
    top = scores.max(1)[0]
    thresholds = torch.tensor(list(bg_thresholds), dtype=top.dtype, device=top.device).view(-1, 1, 1, 1)
    foreground = top[None] > thresholds  # (T, B, h, w)
    return torch.where(foreground, (winner + 1).to(dtype)[None], torch.zeros((), dtype=dtype, device=top.device))


def _class_cam_thresholds(norm_cams: torch.Tensor, percentile: float, min_cam: float) -> torch.Tensor:
    """(B, C) per-image, per-class CAM quantile among the pixels the class wins with CAM above ``min_cam``.

    Classes with no such pixel get +inf (none of their pixels is reliable).
    """
    _b, c = norm_cams.shape[:2]
    flat = norm_cams.flatten(2)  # (B, C, N)
    winner = flat.argmax(1, keepdim=True)  # (B, 1, N)
    own = (torch.arange(c, device=flat.device)[None, :, None] == winner) & (flat > min_cam)
    values = flat.masked_fill(~own, float("nan"))
    thresholds = torch.nanquantile(values.float(), percentile, dim=2)
    return torch.nan_to_num(thresholds, nan=float("inf")).to(norm_cams.dtype)


def reliable_cam_labels(
    image: torch.Tensor,
    norm_cams: torch.Tensor,
    image_labels: torch.Tensor,
    params: TeacherAParams,
    has_background: bool = True,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher A: reliable-region pseudo labels from normalised CAMs, refined by two CRFs.

    With background: the conservative (low-alpha) CRF's argmax gives the label, its background becomes
    ignore, and the generous (high-alpha) CRF's background becomes background (``background="otsu"``: instead
    of the fixed powers, per-image powers whose background score crosses the CAM at ``t + otsu_margin`` and
    ``t - otsu_margin``, ``t`` the image's Otsu threshold of its max CAM, so the split follows the CAMs' own
    spread, e.g. the wide CAMs of a pretrained backbone); a foreground pixel is kept
    only if its CAM clears its class's percentile threshold, a background pixel only if its background
    score clears ``bg_score_threshold``, and any pixel only where its CRF is confident.
    Without background: argmax of the CRF over the image's classes, with the same foreground filtering.

    Args:
        image: (B, 3, h, w) RGB 0..255 at the CAM resolution.
        norm_cams: (B, C, h, w) from ``normalize_cams``.
        image_labels: (B, C) multi-hot.
        pixel_step: image pixels per CAM pixel (sets the CRF kernels' scale).
        valid: optional (B, h, w) bool; invalid pixels (padding) are ignore.
        kernel: ``crf_kernel(image, params.crf, pixel_step)`` if already computed (else computed here).
    Returns:
        (B, h, w) long pseudo labels with ``IGNORE_INDEX`` where unreliable.
    """
    allowed = allowed_labels(image_labels, has_background)
    offset = int(has_background)
    fg_threshold = _class_cam_thresholds(norm_cams, params.fg_percentile, params.fg_min_cam)

    if kernel is None:  # one kernel for both background powers
        kernel = crf_kernel(image, params.crf, pixel_step)

    alpha_low: float | torch.Tensor = params.alpha_low
    alpha_high: float | torch.Tensor = params.alpha_high
    if has_background and params.background == "otsu":  # per-image powers from the CAMs' own spread
        otsu = otsu_thresholds(norm_cams.amax(1), valid)[:, None, None, None]  # (B, 1, 1, 1)
        alpha_low = crossing_power(otsu + params.otsu_margin)
        alpha_high = crossing_power(otsu - params.otsu_margin)

    def crf(alpha: float | torch.Tensor) -> torch.Tensor:
        scores = cam_scores(norm_cams, has_background, alpha)
        probs = scores / scores.sum(1, keepdim=True).clamp_min(1e-5)
        return mean_field(probs, kernel, params.crf, allowed=allowed)

    probs_low = crf(alpha_low)
    confidence, labels = probs_low.max(1)

    fg = labels >= offset  # every label is foreground without a background class
    cls = (labels - offset).clamp_min(0)
    cam_at_label = norm_cams.gather(1, cls[:, None])[:, 0]
    threshold_at_label = fg_threshold.gather(1, cls.flatten(1)).view_as(cls)
    keep = fg & (cam_at_label >= threshold_at_label) & (confidence >= params.crf_confidence)
    labels = labels.masked_fill(~keep, IGNORE_INDEX)

    if has_background:
        probs_high = crf(alpha_high)
        bg_conf, high_labels = probs_high.max(1)
        bg_score = background_score(norm_cams, alpha_high)[:, 0]
        bg = (high_labels == 0) & (bg_conf >= params.crf_confidence) & (bg_score > params.bg_score_threshold)
        labels = labels.masked_fill(bg, 0)
    if valid is not None:
        labels = labels.masked_fill(~valid, IGNORE_INDEX)
    return labels


def refinement_teacher_labels(
    image: torch.Tensor,
    probs: torch.Tensor,
    image_labels: torch.Tensor,
    crf_params: CRFParams,
    confidence: float,
    has_background: bool = True,
    pixel_step: float = 1.0,
    valid: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher B: the refinement branch's softmax, restricted to the image's labels, refined by a CRF, argmax.

    Args:
        image: (B, 3, h, w) RGB 0..255; probs: (B, K, h, w) softmax of R (detached); image_labels: (B, C).
        confidence: pixels whose refined probability is below this become ignore.
        kernel: ``crf_kernel(image, crf_params, pixel_step)`` if already computed (else computed here).
    Returns:
        (B, h, w) long hard labels.
    """
    allowed = allowed_labels(image_labels, has_background)
    if kernel is None:
        kernel = crf_kernel(image, crf_params, pixel_step)
    refined = mean_field(probs, kernel, crf_params, allowed=allowed)
    conf, labels = refined.max(1)
    labels = labels.masked_fill(conf < confidence, IGNORE_INDEX)
    if valid is not None:
        labels = labels.masked_fill(~valid, IGNORE_INDEX)
    return labels
