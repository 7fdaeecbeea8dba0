"""The ASDT objective (DESIGN.md): the two teachers' targets and the loss of R and S, as tensor logic.

Shapes: B images, C foreground classes, K = C + has_background labels, (H, W) the input, (h, w) the label grid
(``label_grid_size``). Profiler sections (``torch.profiler.record_function``) name each part, so benchmarks can
time them without reaching into this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.profiler import record_function

from ..constants import IGNORE_INDEX
from .cam import (
    TeacherAParams,
    allowed_labels,
    normalize_cams,
    refinement_teacher_labels,
    reliable_cam_labels,
)
from .crf import (
    INFERENCE_CRF,
    CRFParams,
    check_connectivity,
    crf_kernel,
    kernel_buffer,
    mean_field,
    resolve_connectivity,
)
from .label_grid import label_grid_size, maps_at, masks_at, rgb_at, valid_at
from .losses import (
    CE_COMBINES,
    balanced_cross_entropy,
    dense_energy_loss,
    pairwise_kernel,
    pairwise_loss,
    soft_distillation,
)
from .pwm import TEACHER_B

SUPERVISIONS = ("pseudo", "ground_truth")
DISTILLATIONS = ("hard", "soft")


@dataclass(frozen=True)
class LossWeights:
    """The loss after the classifier warm-up, with ``r(t)`` the ramp factor:

    ``L = cls * L_cls + r(t) * [refine * (CE(R, Y_A) + pairwise * P(R)) + student * (KD(S, Y) + pairwise * P(S))]``;
    the student's distillation term is scaled by ``teacher_a`` or ``teacher_b`` with its source. Defaults: the
    command line's (``conf/model/asdt.yaml``, a network trained from scratch).
    """

    cls: float = 1.0
    refine: float = 0.5
    student: float = 0.5
    pairwise: float = 0.3
    teacher_a: float = 1.0
    teacher_b: float = 1.0
    distillation: str = "hard"  # "hard": CE on teacher B's CRF labels; "soft": KL to its CRF probabilities
    temperature: float = 1.0
    classifier_warmup: int = 500  # steps trained on L_cls alone, while CAMs are still noise (from-scratch runs)
    ramp: int = 200  # steps over which the segmentation terms rise linearly to full weight after the warm-up
    supervision: str = "pseudo"  # "ground_truth": R and S learn the true masks (the fully supervised upper bound)
    balanced_ce: bool = False  # True: CE averaged over bg and fg pixels separately (the released code's)
    balanced_ce_combine: str = "mean"  # how the bg and fg means join: mean | sum (the released code's)

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be 'pseudo' or 'ground_truth', got {self.supervision!r}")
        if self.distillation not in DISTILLATIONS:
            raise ValueError(f"distillation must be 'hard' or 'soft', got {self.distillation!r}")
        if self.balanced_ce_combine not in CE_COMBINES:
            raise ValueError(f"balanced_ce_combine must be one of {', '.join(CE_COMBINES)}")

    def segmentation_scale(self, step: int) -> float:
        """Factor of the R and S terms at global step ``step`` (after the warm-up): ramps 1/ramp ... 1."""
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (step - self.classifier_warmup + 1) / self.ramp)


@dataclass(frozen=True)
class TeacherBParams:
    """How the refinement branch's output becomes the student's target: the inference CRF of R's softmax."""

    confidence: float = 0.0
    crf: CRFParams = field(default_factory=lambda: dataclasses.replace(INFERENCE_CRF, connectivity="full"))


PAIRWISE_FORMS = ("kernel", "dense_energy")
LABEL_RESOLUTIONS = ("logits", "input")


@dataclass(frozen=True)
class PairwiseParams:
    """The pairwise (CRF) loss: ``form="kernel"``, the row-normalised bilateral kernel of ``losses.pairwise_loss``
    over valid pixels; ``"dense_energy"``, the released code's gated dense-CRF energy (``losses.dense_energy_loss``)
    at ``scale`` of the label grid (``connectivity`` then unused: it is exact and linear in memory)."""

    sxy: float = 100.0
    srgb: float = 15.0
    window: int = 5
    connectivity: str = "full"  # full (every pixel pair) | attention (the same, linear memory) | auto | local
    form: str = "kernel"  # kernel | dense_energy
    scale: float = 1.0  # dense_energy: the label grid's scale it runs at (released: 0.5)

    def __post_init__(self) -> None:
        check_connectivity(self.connectivity)
        if self.connectivity == "dense":
            raise ValueError("the pairwise loss has no pydensecrf2 form: use full, attention, auto or local")
        if self.form not in PAIRWISE_FORMS:
            raise ValueError(f"pairwise form must be one of {', '.join(PAIRWISE_FORMS)}, got {self.form!r}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"pairwise scale must lie in (0, 1], got {self.scale}")


class TeacherTargets(NamedTuple):
    """The teachers' targets for one batch, at the label resolution (h, w) = ``size``."""

    size: tuple[int, int]
    pixel_step: float  # input pixels per label pixel
    rgb: torch.Tensor  # (B, 3, h, w) RGB 0..255
    valid: torch.Tensor  # (B, h, w) bool: not padding
    labels_a: torch.Tensor  # (B, h, w) teacher A's reliable CAM labels, 255 = ignore
    target_b: torch.Tensor | None  # (B, h, w) hard labels, or (B, K, h, w) soft targets, of teacher B


class ASDTLoss:
    """Teacher targets and the ASDT loss; holds the buffers that full CRF kernels are rebuilt in every step."""

    def __init__(
        self,
        weights: LossWeights,
        teacher_a: TeacherAParams,
        teacher_b: TeacherBParams,
        pairwise: PairwiseParams,
        has_background: bool = True,
        label_upsample: int = 1,
        label_resolution: str = "logits",
    ) -> None:
        if int(label_upsample) != label_upsample or label_upsample < 1:
            raise ValueError(f"label_upsample must be a positive integer, got {label_upsample}")
        if label_resolution not in LABEL_RESOLUTIONS:
            choices = ", ".join(LABEL_RESOLUTIONS)
            raise ValueError(f"label_resolution must be one of {choices}, got {label_resolution!r}")
        self.weights, self.teacher_a, self.teacher_b, self.pairwise = weights, teacher_a, teacher_b, pairwise
        self.has_background = has_background
        self.label_upsample = int(label_upsample)
        self.label_resolution = label_resolution
        self._kernel_buffers: dict[str, torch.Tensor] = {}

    def __call__(
        self,
        rgb: torch.Tensor,
        valid: torch.Tensor,
        image_labels: torch.Tensor,
        cams: torch.Tensor,
        refine_logits: torch.Tensor,
        student_logits: torch.Tensor,
        loss_cls: torch.Tensor,
        step: int,
        teacher_source: int,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The full loss after the classifier warm-up, and its logged terms.

        Args:
            rgb: (B, 3, H, W) the input in RGB 0..255; valid: (B, H, W) bool; image_labels: (B, C).
            cams: (B, C, h', w') raw (multi-scale) CAMs; refine_logits, student_logits: (B, K, h0, w0).
            loss_cls: the classification loss; step: the global step (for the ramp);
            teacher_source: the PWM's 0 (teacher A) or 1 (teacher B); masks: (B, H, W) for ground-truth supervision.
        """
        w = self.weights
        from_b = teacher_source == TEACHER_B and w.supervision == "pseudo"
        t = self.teacher_targets(rgb, valid, image_labels, cams, refine_logits, with_teacher_b=from_b)
        labels_a = t.labels_a
        if w.supervision == "ground_truth":  # the upper bound: both heads learn the true masks
            if masks is None:
                raise ValueError("supervision='ground_truth' needs training masks; this batch has none")
            labels_a = masks_at(masks, t.size).masked_fill(~t.valid, IGNORE_INDEX)
        with record_function("asdt: resize logits"):
            refine_logits, student_logits = maps_at(refine_logits, t.size), maps_at(student_logits, t.size)

        with record_function("asdt: losses"):
            loss_refine_ce = self._cross_entropy(refine_logits, labels_a)
            kernel = self._pairwise_kernel(t.rgb, t.pixel_step, t.valid)
            loss_refine_pair = self._pairwise(refine_logits, kernel, t, labels_a)
            if not from_b:
                loss_distill = w.teacher_a * self._cross_entropy(student_logits, labels_a)
            elif w.distillation == "soft":
                loss_distill = w.teacher_b * soft_distillation(student_logits, t.target_b, t.valid, w.temperature)
            else:  # teacher B labels every pixel: the plain mean (the paper's pceloss), not teacher A's balancing
                loss_distill = w.teacher_b * balanced_cross_entropy(student_logits, t.target_b, balanced=False)
            loss_student_pair = self._pairwise(student_logits, kernel, t, labels_a)

        ramp = w.segmentation_scale(step)
        loss = w.cls * loss_cls + ramp * (
            w.refine * (loss_refine_ce + w.pairwise * loss_refine_pair)
            + w.student * (loss_distill + w.pairwise * loss_student_pair)
        )
        labelled = (labels_a != IGNORE_INDEX).float().sum() / t.valid.float().sum().clamp_min(1)
        terms = {
            "train/loss": loss,
            "train/loss_cls": loss_cls,
            "train/loss_refine_ce": loss_refine_ce,
            "train/loss_refine_pairwise": loss_refine_pair,
            "train/loss_student_distill": loss_distill,
            "train/loss_student_pairwise": loss_student_pair,
            "train/teacher_a_labelled_fraction": labelled,
            "train/segmentation_ramp": ramp,
        }
        return loss, terms

    @torch.no_grad()
    def teacher_targets(
        self,
        rgb: torch.Tensor,
        valid: torch.Tensor,
        image_labels: torch.Tensor,
        cams: torch.Tensor,
        refine_logits: torch.Tensor,
        with_teacher_b: bool = True,
    ) -> TeacherTargets:
        """What the two teachers teach on this batch, at the label grid.

        Args:
            rgb: (B, 3, H, W) RGB 0..255; valid: (B, H, W) bool; image_labels: (B, C).
            cams: (B, C, h', w') raw (multi-scale) CAMs; refine_logits: (B, K, h0, w0) R's logits.
            with_teacher_b: also refine R's output into teacher B's target (steps where the student learns from B).
        """
        if self.label_resolution == "input":  # the released code's: labels and CE at the crop's pixels
            size = (rgb.shape[-2], rgb.shape[-1])
        else:
            size = label_grid_size(refine_logits, self.label_upsample)
        pixel_step = rgb.shape[-1] / size[-1]
        with record_function("asdt: resize RGB / valid"):
            rgb, valid = rgb_at(rgb, size), valid_at(valid, size)
        with record_function("asdt: teacher A labels"):
            norm_cams = normalize_cams(maps_at(cams, size), image_labels)
            crf_a = self.teacher_a.crf
            kernel_a = crf_kernel(rgb, crf_a, pixel_step, self._kernel_out("teachers", rgb, crf_a.connectivity))
            labels_a = reliable_cam_labels(
                rgb, norm_cams, image_labels, self.teacher_a, self.has_background, pixel_step, valid, kernel_a
            )
            del kernel_a  # its buffer serves teacher B's kernel
        target_b = None
        if with_teacher_b:
            with record_function("asdt: teacher B labels"):
                refine_probs = torch.softmax(maps_at(refine_logits.detach(), size), 1)
                target_b = self._teacher_b_target(rgb, refine_probs, image_labels, pixel_step, valid)
        return TeacherTargets(size, pixel_step, rgb, valid, labels_a, target_b)

    def _teacher_b_target(self, rgb, refine_probs, image_labels, pixel_step, valid) -> torch.Tensor:
        """Hard labels (B, h, w) or, for soft distillation, refined probabilities (B, K, h, w)."""
        crf_b = self.teacher_b.crf
        kernel_b = crf_kernel(rgb, crf_b, pixel_step, self._kernel_out("teachers", rgb, crf_b.connectivity))
        if self.weights.distillation == "soft":
            return mean_field(refine_probs, kernel_b, crf_b, allowed=allowed_labels(image_labels, self.has_background))
        return refinement_teacher_labels(
            rgb, refine_probs, image_labels, crf_b, self.teacher_b.confidence, self.has_background, pixel_step,
            valid, kernel_b,
        )  # fmt: skip

    def _kernel_out(self, name: str, rgb: torch.Tensor, connectivity: str) -> torch.Tensor | None:
        """The buffer a full kernel of ``rgb``'s grid is built in (``method.crf.kernel_buffer``), or None."""
        b, _, h, w = rgb.shape
        full = resolve_connectivity(connectivity, b, h, w) == "full"  # auto: full where it fits
        return kernel_buffer(self._kernel_buffers, name, rgb) if full else None

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.weights
        return balanced_cross_entropy(
            logits, labels, self.has_background, balanced=w.balanced_ce, combine=w.balanced_ce_combine
        )

    def _pairwise_kernel(self, rgb, pixel_step, valid) -> torch.Tensor | None:
        """The pairwise loss's kernel, computed once per step for both heads (``None`` when the term is off or
        its form needs none)."""
        if self.weights.pairwise == 0 or self.pairwise.form == "dense_energy":
            return None
        p = self.pairwise
        with torch.no_grad(), record_function("asdt: pairwise kernel"):
            out = self._kernel_out("pairwise", rgb, p.connectivity)  # free again once this step's backward ran
            return pairwise_kernel(rgb, p.sxy, p.srgb, p.window, pixel_step, valid, p.connectivity, out)

    def _pairwise(self, logits, kernel, t: TeacherTargets, labels: torch.Tensor) -> torch.Tensor:
        """One head's pairwise term at the label grid (``labels``: teacher A's, the dense energy's gate)."""
        p = self.pairwise
        if self.weights.pairwise == 0:
            return logits.sum() * 0.0
        if p.form == "dense_energy":
            probs = torch.softmax(logits, 1)
            return dense_energy_loss(probs, t.rgb, t.valid, labels, p.srgb, p.sxy, p.scale, t.pixel_step)
        return pairwise_loss(logits, kernel, t.valid)
