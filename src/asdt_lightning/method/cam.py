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
RELIABILITY_RULES = ("per_label", "released")  # which pixels teacher A keeps (TeacherAParams.rule)


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
    rule: str = "per_label"  # per_label | released (see reliable_cam_labels)
    ignore_padding: bool = True  # padded pixels of the crop are ignore; False: they get labels too (released)

    def __post_init__(self) -> None:
        if self.rule not in RELIABILITY_RULES:
            raise ValueError(f"rule must be one of {', '.join(RELIABILITY_RULES)}, got {self.rule!r}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if not 0 <= self.otsu_margin < 0.5:
            raise ValueError(f"otsu_margin must lie in [0, 0.5), got {self.otsu_margin}")


def merge_multiscale_cams(cams: Sequence[torch.Tensor], size: tuple[int, int], relu_each: bool = False) -> torch.Tensor:
    """Average CAMs computed at several input scales after resizing each to ``size``.

    Args:
        cams: list of (B, C, h_i, w_i) raw CAMs.
        relu_each: ReLU each scale's CAMs before averaging (the released code's), so one scale's negative
            evidence cannot cancel another's positive.
    Returns:
        (B, C, *size) averaged CAMs.
    """
    if relu_each:
        cams = [F.relu(c) for c in cams]
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


def _released_class_thresholds(norm_cams: torch.Tensor, cam_winner: torch.Tensor, percentile: float, min_cam: float):
    """(B, C) the released code's per-class CAM threshold: of the class's CAM values above ``min_cam`` where it
    wins ``cam_winner`` (the argmax over background score and CAMs, labels 0..C), sorted, the one at index
    ``floor(percentile * n)``; +inf for a class with no such pixel (where the released code crashes)."""
    c = norm_cams.shape[1]
    flat = norm_cams.flatten(2)  # (B, C, N)
    own = (cam_winner.flatten(1)[:, None] == torch.arange(1, c + 1, device=flat.device)[None, :, None]) & (
        flat > min_cam
    )
    n = own.sum(2)  # (B, C)
    ordered = flat.masked_fill(~own, float("inf")).sort(2).values
    index = (n.float() * percentile).floor().long().clamp(max=flat.shape[2] - 1)
    thresholds = ordered.gather(2, index[..., None])[..., 0]
    return torch.where(n > 0, thresholds, torch.full_like(thresholds, float("inf")))


def _released_reliable(
    norm_cams: torch.Tensor,
    probs_low: torch.Tensor,
    probs_high: torch.Tensor,
    alpha_high: float | torch.Tensor,
    params: TeacherAParams,
) -> torch.Tensor:
    """The released code's reliable labels (``rule="released"``, with background) from its two CRFs' outputs.

    A pixel takes the conservative CRF's foreground label, or background where the generous CRF says background;
    it is kept where (a) the CRFs are confident: ``max(generous bg, conservative fg probabilities) >= crf_confidence``
    and (b) it lies in any label's sure region: the pixels whose CAM argmax (background score included) is a
    foreground class that the conservative CRF assigns somewhere and whose CAM exceeds that class's threshold
    (``_released_class_thresholds``), or whose argmax is background with background score above
    ``bg_score_threshold``, where the conservative CRF assigns background somewhere.

    Args:
        norm_cams: (B, C, h, w); probs_low, probs_high: (B, C + 1, h, w) the two CRFs' marginals.
    Returns:
        (B, h, w) long labels, ``IGNORE_INDEX`` where unreliable.
    """
    c = norm_cams.shape[1]
    bg_score = background_score(norm_cams, alpha_high)  # (B, 1, h, w)
    cam_winner = torch.cat([bg_score, norm_cams], 1).argmax(1)  # (B, h, w) 0 = background
    low_labels, high_labels = probs_low.argmax(1), probs_high.argmax(1)
    assigned = F.one_hot(low_labels.flatten(1), c + 1).amax(1).bool()  # (B, C + 1) labels the CRF gives somewhere
    thresholds = _released_class_thresholds(norm_cams, cam_winner, params.fg_percentile, params.fg_min_cam)
    winner_fg = (cam_winner - 1).clamp_min(0)
    cam_at_winner = norm_cams.gather(1, winner_fg[:, None])[:, 0]
    fg_sure = (cam_winner > 0) & (cam_at_winner > thresholds.gather(1, winner_fg.flatten(1)).view_as(winner_fg))
    bg_sure = (cam_winner == 0) & (bg_score[:, 0] > params.bg_score_threshold)
    winner_assigned = assigned.gather(1, cam_winner.flatten(1)).view_as(cam_winner)
    sure = (fg_sure | bg_sure) & winner_assigned
    confidence = torch.maximum(probs_high[:, 0], probs_low[:, 1:].amax(1))
    labels = low_labels.masked_fill(low_labels == 0, IGNORE_INDEX).masked_fill(high_labels == 0, 0)
    return labels.masked_fill(~sure | (confidence < params.crf_confidence), IGNORE_INDEX)


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
    score clears ``bg_score_threshold``, and any pixel only where its CRF is confident (``rule="per_label"``).
    ``rule="released"``: the released code's ``compute_seg_label`` (``_released_reliable``).
    Without background: argmax of the CRF over the image's classes, with the same foreground filtering.

    Args:
        image: (B, 3, h, w) RGB 0..255 at the CAM resolution.
        norm_cams: (B, C, h, w) from ``normalize_cams``.
        image_labels: (B, C) multi-hot.
        pixel_step: image pixels per CAM pixel (sets the CRF kernels' scale).
        valid: optional (B, h, w) bool; invalid pixels (padding) are ignore (unless ``params.ignore_padding`` is
            False).
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
        if params.rule == "released":  # its unaries are -log of the raw scores (a per-pixel shift but the clip)
            return mean_field(scores, kernel, params.crf, allowed=allowed)
        probs = scores / scores.sum(1, keepdim=True).clamp_min(1e-5)
        return mean_field(probs, kernel, params.crf, allowed=allowed)

    probs_low = crf(alpha_low)
    if has_background and params.rule == "released":
        labels = _released_reliable(norm_cams, probs_low, crf(alpha_high), alpha_high, params)
        if valid is not None and params.ignore_padding:
            labels = labels.masked_fill(~valid, IGNORE_INDEX)
        return labels
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
    if valid is not None and params.ignore_padding:
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
