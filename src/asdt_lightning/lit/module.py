"""The ASDT LightningModule: the loss of DESIGN.md, the paper's parameter groups, per-branch validation mIoU."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F

from ..errors import ASDTUserError
from ..method.cam import (
    IGNORE_INDEX,
    TeacherAParams,
    allowed_labels,
    cam_segmentation,
    cam_segmentation_sweep,
    merge_multiscale_cams,
    normalize_cams,
    refinement_teacher_labels,
    reliable_cam_labels,
)
from ..method.crf import CRFParams, check_connectivity, crf_kernel, kernel_buffer, mean_field
from ..method.losses import (
    balanced_cross_entropy,
    classification_loss,
    pairwise_kernel,
    pairwise_loss,
    soft_distillation,
)
from ..method.pwm import TEACHER_B
from ..metrics import ConfusionMatrices, iou_from_confusion
from ..models.asdt import ASDTOutput, build_asdt_net
from .optim import build_optimizer, fused_allowed, poly_schedule

BRANCHES = ("cam", "refine", "student", "fused")
SEGMENTATION_BRANCHES = ("refine", "student", "fused")


class TeacherTargets(NamedTuple):
    """The teachers' targets for one batch, at the label resolution (h, w) = ``size``."""

    size: tuple[int, int]
    pixel_step: float  # input pixels per label pixel
    rgb: torch.Tensor  # (B, 3, h, w) RGB 0..255
    valid: torch.Tensor  # (B, h, w) bool: not padding
    labels_a: torch.Tensor  # (B, h, w) teacher A's reliable CAM labels, 255 = ignore
    target_b: torch.Tensor | None  # (B, h, w) hard labels, or (B, K, h, w) soft targets, of teacher B


@dataclass(frozen=True)
class LossWeights:
    """The loss after the classifier warm-up, with ``r(t)`` the ramp factor:

    ``L = cls * L_cls + r(t) * [refine * (CE(R, Y_A) + pairwise * P(R)) + student * (KD(S, Y) + pairwise * P(S))]``;
    the student's distillation term is scaled by ``teacher_a`` or ``teacher_b`` with its source."""

    cls: float = 1.0
    refine: float = 0.5
    student: float = 0.5
    pairwise: float = 1.0
    teacher_a: float = 1.0
    teacher_b: float = 1.0
    distillation: str = "hard"  # "hard": CE on teacher B's CRF labels; "soft": KL to its CRF probabilities
    temperature: float = 1.0
    classifier_warmup: int = 0  # steps trained on L_cls alone, while CAMs are still noise (from-scratch runs)
    ramp: int = 0  # steps over which the segmentation terms rise linearly to full weight after the warm-up
    supervision: str = "pseudo"  # "ground_truth": R and S learn the true masks (the fully supervised upper bound)
    balanced_ce: bool = False  # True: CE averaged over bg and fg pixels separately (the released code's)

    def segmentation_scale(self, step: int) -> float:
        """Factor of the R and S terms at global step ``step`` (after the warm-up): ramps 1/ramp ... 1."""
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (step - self.classifier_warmup + 1) / self.ramp)


@dataclass(frozen=True)
class TeacherBParams:
    """How the refinement branch's output becomes the student's target."""

    confidence: float = 0.0
    crf: CRFParams = field(default_factory=lambda: CRFParams(bilateral_sxy=83, bilateral_srgb=5, bilateral_compat=4))


@dataclass(frozen=True)
class PairwiseParams:
    """The pairwise (CRF) loss's bilateral kernel."""

    sxy: float = 100.0
    srgb: float = 15.0
    window: int = 5
    connectivity: str = "full"  # full (every pixel pair of the label grid) | local (window x window)

    def __post_init__(self) -> None:
        check_connectivity(self.connectivity)


@dataclass(frozen=True)
class OptimizerParams:
    """SGD with the 1x/2x/10x/20x groups (backbone weights/biases, head weights/biases), or AdamW; poly decay."""

    name: str = "sgd"
    lr: float = 7e-4
    momentum: float = 0.9
    weight_decay: float = 1e-5
    poly_power: float = 0.9
    backbone_bias_mult: float = 2.0
    head_weight_mult: float = 10.0
    head_bias_mult: float = 20.0


def _from_dict(base: Any, values: Mapping[str, Any] | None) -> Any:
    """Override a params dataclass (class or instance) with a plain, possibly nested, dict; unknown keys fail."""
    base = base() if isinstance(base, type) else base
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ASDTUserError(f"unknown option(s) {unknown} for {type(base).__name__}; known: {sorted(known)}")
    for key, value in values.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            values[key] = _from_dict(current, value)
    try:
        return dataclasses.replace(base, **values)
    except ValueError as err:  # a params dataclass refusing a value
        raise ASDTUserError(f"{type(base).__name__}: {err}") from None


class ASDTModule(L.LightningModule):
    """ASDT training and per-branch validation.

    All arguments are plain values (saved as hyper-parameters, so ``load_from_checkpoint`` rebuilds the model).
    The student's teacher at each step is set by ``PWMCallback`` through ``set_teacher``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        class_names: Sequence[str],
        has_background: bool = True,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        cam_scales: Sequence[float] = (1.0,),
        loss: dict[str, Any] | None = None,
        teacher_a: dict[str, Any] | None = None,
        teacher_b: dict[str, Any] | None = None,
        pairwise: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        cam_thresholds: Sequence[float] = tuple(round(0.05 * i, 2) for i in range(1, 20)),
        label_upsample: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.has_background = has_background
        self.cam_scales = [float(s) for s in cam_scales]
        if int(label_upsample) != label_upsample or label_upsample < 1:
            raise ASDTUserError(f"model.label_upsample must be a positive integer, got {label_upsample}")
        self.label_upsample = int(label_upsample)
        if not self.cam_scales or self.cam_scales[0] != 1.0:
            raise ASDTUserError(f"model.cam_scales must start with 1.0 (the scale with gradient), got {cam_scales}")
        self.loss_weights = _from_dict(LossWeights, loss)
        if self.loss_weights.supervision not in ("pseudo", "ground_truth"):
            mode = self.loss_weights.supervision
            raise ASDTUserError(f"model.loss.supervision must be 'pseudo' or 'ground_truth', got {mode!r}")
        if self.loss_weights.distillation not in ("hard", "soft"):
            mode = self.loss_weights.distillation
            raise ASDTUserError(f"model.loss.distillation must be 'hard' or 'soft', got {mode!r}")
        self.teacher_a = _from_dict(TeacherAParams, teacher_a)
        self.teacher_b = _from_dict(TeacherBParams, teacher_b)
        self.pairwise = _from_dict(PairwiseParams, pairwise)
        self.optim = _from_dict(OptimizerParams, optimizer)
        if self.optim.name not in ("sgd", "adamw"):
            raise ASDTUserError(f"model.optimizer.name must be 'sgd' or 'adamw', got {self.optim.name!r}")
        self.net = build_asdt_net(num_classes=len(self.class_names), has_background=has_background, **net)
        self._kernel_buffers: dict[str, torch.Tensor] = {}  # full CRF kernels are rebuilt in place every step
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1) * 255, persistent=False)
        self.cam_thresholds = [float(t) for t in cam_thresholds] if has_background else [0.0]
        k = self.net.num_labels
        self.val_confusion = ConfusionMatrices(len(SEGMENTATION_BRANCHES), k, IGNORE_INDEX)
        self.val_cam_confusion = ConfusionMatrices(len(self.cam_thresholds), k, IGNORE_INDEX)
        self.teacher_step = -1  # global step for which ``teacher_source`` was set
        self.teacher_source = 0
        self.val_results: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------- PWM interface
    def set_teacher(self, step: int, source: int) -> None:
        """Called by ``PWMCallback`` before every training step: 0 = teacher A (CAM), 1 = teacher B (R)."""
        self.teacher_step = step
        self.teacher_source = int(source)

    # ------------------------------------------------------------------------------------------------ helpers
    def forward(self, images: torch.Tensor) -> ASDTOutput:
        return self.net(images)

    def rgb_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Undo the input normalisation and resize: (B, 3, H, W) -> (B, 3, *size) RGB in 0..255."""
        rgb = images.float() * self.image_std + self.image_mean
        return F.interpolate(rgb, size, mode="area").clamp(0, 255)

    @staticmethod
    def valid_at(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, H, W) bool -> (B, *size) bool: a low-resolution pixel is valid if most of it is."""
        return F.interpolate(valid[:, None].float(), size, mode="area")[:, 0] > 0.5

    def label_size(self, out: ASDTOutput) -> tuple[int, int]:
        """(h, w) of pseudo labels, CRFs and pixel losses: the segmentation logits' size times ``label_upsample``.

        At output stride 8 a small crop gives too few pixels per object for the pairwise terms to follow its
        outline; the heads' stride-4 skip or ``label_upsample`` gives them more.
        """
        h, w = out.refine_logits.shape[-2:]
        return h * self.label_upsample, w * self.label_upsample

    @staticmethod
    def at_label_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, h, w) -> (B, K, *size) float32, bilinear where the size differs."""
        maps = maps.float()
        if tuple(maps.shape[-2:]) == tuple(size):
            return maps
        return F.interpolate(maps, size, mode="bilinear", align_corners=False)

    @staticmethod
    def masks_at(masks: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """(B, H, W) label maps -> (B, *size) long, nearest; for ``supervision=ground_truth``."""
        if masks is None:
            raise ASDTUserError("model.loss.supervision=ground_truth needs training masks; this batch has none")
        return F.interpolate(masks[:, None].float(), size, mode="nearest")[:, 0].long()

    def training_cams(self, images: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """Multi-scale CAMs: the scale-1 CAMs (detached) averaged with no-grad CAMs at the other scales."""
        size = cams.shape[-2:]
        maps = [cams.detach()]
        with torch.no_grad():
            for scale in self.cam_scales[1:]:
                scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
                maps.append(self.net.forward_cams(scaled))
        return merge_multiscale_cams(maps, size)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.teacher_step != self.global_step:
            raise RuntimeError(
                "the student's teacher was not set for this step: add asdt_lightning.lit.callbacks.PWMCallback "
                "to the Trainer's callbacks"
            )
        images, image_labels, valid = batch["image"], batch["labels"], batch["valid"]
        out = self.net(images)
        loss_cls = classification_loss(out.class_logits.float(), image_labels)
        if self.global_step < self.loss_weights.classifier_warmup:
            loss = self.loss_weights.cls * loss_cls + 0.0 * (out.refine_logits.sum() + out.student_logits.sum())
            self.log_dict(
                {"train/loss": loss, "train/loss_cls": loss_cls},
                on_step=True,
                on_epoch=False,
                batch_size=images.shape[0],
            )
            self.log("loss", loss, prog_bar=True, logger=False, batch_size=images.shape[0])
            return loss
        cams = self.training_cams(images, out.cams)  # the extra scales' forwards at the trainer's precision
        with torch.autocast(images.device.type, enabled=False):  # labels, CRFs and pixel losses in fp32
            loss, terms = self.asdt_loss(images, image_labels, valid, out, cams, loss_cls, batch.get("mask"))
        self.log_dict(terms, on_step=True, on_epoch=False, prog_bar=False, batch_size=images.shape[0])
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=images.shape[0])
        return loss

    def asdt_loss(
        self,
        images: torch.Tensor,
        image_labels: torch.Tensor,
        valid: torch.Tensor,
        out: ASDTOutput,
        cams: torch.Tensor,
        loss_cls: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The full loss after the classifier warm-up, and its logged terms; ``cams``: (B, C, h, w) multi-scale."""
        w = self.loss_weights
        from_b = self.teacher_source == TEACHER_B and w.supervision == "pseudo"
        t = self.teacher_targets(images, image_labels, valid, out, cams, with_teacher_b=from_b)
        rgb, valid_lr, pixel_step, labels_a, target_b = t.rgb, t.valid, t.pixel_step, t.labels_a, t.target_b
        if w.supervision == "ground_truth":  # the upper bound: both heads learn the true masks
            labels_a = self.masks_at(masks, t.size).masked_fill(~valid_lr, IGNORE_INDEX)
        refine_logits = self.at_label_size(out.refine_logits, t.size)
        student_logits = self.at_label_size(out.student_logits, t.size)

        loss_refine_ce = balanced_cross_entropy(refine_logits, labels_a, self.has_background, balanced=w.balanced_ce)
        kernel = self._pairwise_kernel(rgb, pixel_step, valid_lr)
        loss_refine_pair = self._pairwise(refine_logits, kernel, valid_lr)
        if not from_b:
            loss_distill = w.teacher_a * balanced_cross_entropy(
                student_logits, labels_a, self.has_background, balanced=w.balanced_ce
            )
        elif w.distillation == "soft":
            loss_distill = w.teacher_b * soft_distillation(student_logits, target_b, valid_lr, w.temperature)
        else:
            loss_distill = w.teacher_b * balanced_cross_entropy(
                student_logits, target_b, self.has_background, balanced=w.balanced_ce
            )
        loss_student_pair = self._pairwise(student_logits, kernel, valid_lr)

        ramp = w.segmentation_scale(self.global_step)
        loss = w.cls * loss_cls + ramp * (
            w.refine * (loss_refine_ce + w.pairwise * loss_refine_pair)
            + w.student * (loss_distill + w.pairwise * loss_student_pair)
        )
        labelled = (labels_a != IGNORE_INDEX).float().sum() / valid_lr.float().sum().clamp_min(1)
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
        images: torch.Tensor,
        image_labels: torch.Tensor,
        valid: torch.Tensor,
        out: ASDTOutput,
        cams: torch.Tensor,
        with_teacher_b: bool = True,
    ) -> TeacherTargets:
        """What the two teachers teach on this batch, at the label resolution (``label_size``).

        Args:
            images: (B, 3, H, W) normalised; image_labels: (B, C); valid: (B, H, W) bool; out: ``self(images)``.
            cams: (B, C, h, w) raw (multi-scale) CAMs, e.g. ``training_cams(images, out.cams)``.
            with_teacher_b: also refine R's output into teacher B's target (steps where the student learns from B).
        """
        size = self.label_size(out)
        pixel_step = images.shape[-1] / size[-1]
        rgb = self.rgb_at(images, size)
        valid_lr = self.valid_at(valid, size)
        norm_cams = normalize_cams(self.at_label_size(cams, size), image_labels)
        crf_a = self.teacher_a.crf
        kernel_a = crf_kernel(rgb, crf_a, pixel_step, self._kernel_out("teachers", rgb, crf_a.connectivity))
        labels_a = reliable_cam_labels(
            rgb, norm_cams, image_labels, self.teacher_a, self.has_background, pixel_step, valid_lr, kernel_a
        )
        del kernel_a  # its buffer serves teacher B's kernel
        target_b = None
        if with_teacher_b:
            refine_probs = torch.softmax(self.at_label_size(out.refine_logits.detach(), size), 1)
            target_b = self._teacher_b_target(rgb, refine_probs, image_labels, pixel_step, valid_lr)
        return TeacherTargets(size, pixel_step, rgb, valid_lr, labels_a, target_b)

    def _teacher_b_target(self, rgb, refine_probs, image_labels, pixel_step, valid_lr) -> torch.Tensor:
        """Hard labels (B, h, w) or, for soft distillation, refined probabilities (B, K, h, w)."""
        crf_b = self.teacher_b.crf
        kernel_b = crf_kernel(rgb, crf_b, pixel_step, self._kernel_out("teachers", rgb, crf_b.connectivity))
        if self.loss_weights.distillation == "soft":
            allowed = allowed_labels(image_labels, self.has_background)
            return mean_field(refine_probs, kernel_b, crf_b, allowed=allowed)
        return refinement_teacher_labels(
            rgb,
            refine_probs,
            image_labels,
            crf_b,
            self.teacher_b.confidence,
            self.has_background,
            pixel_step,
            valid_lr,
            kernel_b,
        )

    def _kernel_out(self, name: str, rgb: torch.Tensor, connectivity: str) -> torch.Tensor | None:
        """The buffer a full kernel of ``rgb``'s grid is built in (``method.crf.kernel_buffer``), or None."""
        return kernel_buffer(self._kernel_buffers, name, rgb) if connectivity == "full" else None

    def _pairwise_kernel(self, rgb, pixel_step, valid_lr) -> torch.Tensor | None:
        """The pairwise loss's kernel, computed once per step for both heads (``None`` when the term is off)."""
        if self.loss_weights.pairwise == 0:
            return None
        p = self.pairwise
        with torch.no_grad():
            out = self._kernel_out("pairwise", rgb, p.connectivity)  # free again once this step's backward ran
            return pairwise_kernel(rgb, p.sxy, p.srgb, p.window, pixel_step, valid_lr, p.connectivity, out)

    @staticmethod
    def _pairwise(logits, kernel, valid_lr) -> torch.Tensor:
        if kernel is None:
            return logits.sum() * 0.0
        return pairwise_loss(logits, kernel, valid_lr)

    # ------------------------------------------------------------------------------------------- validation
    def branch_probabilities(self, images: torch.Tensor, image_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-branch outputs at the input resolution, restricted to the image's labels.

        Returns ``cam``: (B, C, H, W) normalised CAMs, and ``refine``/``student``/``fused``: (B, K, H, W)
        probabilities (fused = element-wise max of R's and S's softmax).
        """
        out = self.net(images)
        size = images.shape[-2:]
        allowed = allowed_labels(image_labels, self.has_background)[:, :, None, None]

        def probs(logits: torch.Tensor) -> torch.Tensor:
            logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=False)
            return torch.softmax(logits.masked_fill(~allowed, float("-inf")), 1)

        cams = F.interpolate(out.cams.float(), size, mode="bilinear", align_corners=False)
        refine, student = probs(out.refine_logits), probs(out.student_logits)
        return {
            "cam": normalize_cams(cams, image_labels),
            "refine": refine,
            "student": student,
            "fused": torch.maximum(refine, student),
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, image_labels, masks = batch["image"], batch["labels"], batch["mask"]
        outputs = self.branch_probabilities(images, image_labels)
        self.val_confusion.update(torch.stack([outputs[b].argmax(1) for b in SEGMENTATION_BRANCHES]), masks)
        if self.has_background:
            cam_labels = cam_segmentation_sweep(outputs["cam"], image_labels, self.cam_thresholds)
        else:
            cam_labels = cam_segmentation(outputs["cam"], image_labels, None)[None]
        self.val_cam_confusion.update(cam_labels, masks)

    def on_validation_epoch_end(self) -> None:
        cam_ious = [iou_from_confusion(c) for c in self.val_cam_confusion.compute()]
        best = max(range(len(cam_ious)), key=lambda i: float(torch.nanmean(cam_ious[i])))
        per_class = {"cam": cam_ious[best]}
        for branch, confusion in zip(SEGMENTATION_BRANCHES, self.val_confusion.compute(), strict=True):
            per_class[branch] = iou_from_confusion(confusion)
        self.val_confusion.reset()
        self.val_cam_confusion.reset()
        miou = {b: float(torch.nanmean(per_class[b])) for b in BRANCHES}
        label_names = (["background"] if self.has_background else []) + self.class_names
        self.val_results = {
            "miou": miou,
            "cam_threshold": self.cam_thresholds[best],
            "per_class_iou": {b: dict(zip(label_names, v.tolist(), strict=True)) for b, v in per_class.items()},
        }
        self.log_dict({f"val/miou_{b}": v for b, v in miou.items()}, prog_bar=False)
        self.log("val/cam_threshold", self.cam_thresholds[best])
        self.log("val_miou", miou["fused"], prog_bar=True, logger=False)

    # -------------------------------------------------------------------------------------------- optimiser
    def parameter_groups(self) -> list[dict[str, Any]]:
        """1x backbone weights, 2x backbone biases/norms (no decay), 10x head weights, 20x head biases (no decay)."""
        o = self.optim
        head_ids = {id(p) for m in self.net.head_modules() for p in m.parameters()}
        groups: dict[str, dict[str, Any]] = {
            "backbone_weight": {"params": [], "lr_mult": 1.0, "weight_decay": o.weight_decay},
            "backbone_bias": {"params": [], "lr_mult": o.backbone_bias_mult, "weight_decay": 0.0},
            "head_weight": {"params": [], "lr_mult": o.head_weight_mult, "weight_decay": o.weight_decay},
            "head_bias": {"params": [], "lr_mult": o.head_bias_mult, "weight_decay": 0.0},
        }
        for p in self.net.parameters():
            if not p.requires_grad:
                continue
            part = "head" if id(p) in head_ids else "backbone"
            kind = "weight" if p.ndim > 1 else "bias"
            groups[f"{part}_{kind}"]["params"].append(p)
        result = []
        for name, g in groups.items():
            if g["params"]:
                result.append({**g, "name": name, "lr": o.lr * g["lr_mult"]})
        return result

    def configure_optimizers(self):
        o = self.optim  # weight decay is set per parameter group
        groups = self.parameter_groups()
        optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, allow_fused=fused_allowed(self.trainer))
        return poly_schedule(optimizer, self.trainer, o.poly_power)
