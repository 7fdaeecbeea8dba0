"""The ASDT LightningModule: wires the network, the ASDT objective (``method.asdt_loss``), the paper's parameter
groups and per-branch validation mIoU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..errors import ASDTUserError, with_config_path
from ..method.asdt_loss import ASDTLoss, LossWeights, PairwiseParams, TeacherBParams, TeacherTargets
from ..method.cam import (
    CAM_THRESHOLDS,
    TeacherAParams,
    allowed_labels,
    cam_label_maps,
    merge_multiscale_cams,
    normalize_cams,
    predicted_image_labels,
)
from ..method.fusion import FUSION_CHOICES, fuse_branches
from ..method.label_grid import rgb_at, unnormalize, valid_at
from ..method.losses import classification_loss
from ..metrics import ConfusionMatrices, iou_from_confusion, label_names
from ..models.asdt import ASDTOutput, build_asdt_net
from ..params import params_from
from .optim import OptimizerParams, build_optimizer, fused_allowed, parameter_groups, poly_schedule

BRANCHES = ("cam", "refine", "student", "fused")
SEGMENTATION_BRANCHES = ("refine", "student", "fused")
HEAD_SETTINGS = (
    "head_channels",
    "head_dilation",
    "skip_channels",
    "cam_dropout",
    "head_init",
    "cam_pooling",
    "cam_topk_fraction",
)

__all__ = ["ASDTModule", "LossWeights", "OptimizerParams", "PairwiseParams", "TeacherBParams", "TeacherTargets"]


class ASDTModule(L.LightningModule):
    """ASDT training and per-branch validation.

    All arguments are plain values (saved as hyper-parameters, so ``load_from_checkpoint`` rebuilds the model);
    the dict arguments override the defaults of ``LossWeights``, ``TeacherAParams``, ``TeacherBParams``,
    ``PairwiseParams`` and ``OptimizerParams``, which are the command line's. The student's teacher at each step
    is set by ``PWMCallback`` through ``set_teacher``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        class_names: Sequence[str],
        has_background: bool = True,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        cam_scales: Sequence[float] = (1.0, 0.5),
        loss: dict[str, Any] | None = None,
        teacher_a: dict[str, Any] | None = None,
        teacher_b: dict[str, Any] | None = None,
        pairwise: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        cam_thresholds: Sequence[float] = CAM_THRESHOLDS,
        label_upsample: int = 1,
        fusion: str = "max",
        label_resolution: str = "logits",
        cam_relu_each_scale: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.has_background = has_background
        self.cam_scales = [float(s) for s in cam_scales]
        self.cam_relu_each_scale = bool(cam_relu_each_scale)
        if not self.cam_scales or self.cam_scales[0] != 1.0:
            raise ASDTUserError(f"model.cam_scales must start with 1.0 (the scale with gradient), got {cam_scales}")
        if fusion not in FUSION_CHOICES:
            raise ASDTUserError(f"model.fusion must be one of {', '.join(FUSION_CHOICES)}, got {fusion!r}")
        self.fusion = fusion
        self.loss_weights = params_from(LossWeights, loss, "model.loss")
        self.teacher_a = params_from(TeacherAParams, teacher_a, "model.teacher_a")
        self.teacher_b = params_from(TeacherBParams, teacher_b, "model.teacher_b")
        self.pairwise = params_from(PairwiseParams, pairwise, "model.pairwise")
        self.optim = params_from(OptimizerParams, optimizer, "model.optimizer")
        try:
            self.objective = ASDTLoss(
                self.loss_weights, self.teacher_a, self.teacher_b, self.pairwise, has_background, label_upsample,
                label_resolution,
            )  # fmt: skip
        except ValueError as err:
            raise with_config_path(err, "model") from None
        self.label_upsample = self.objective.label_upsample
        try:
            self.net = build_asdt_net(num_classes=len(self.class_names), has_background=has_background, **net)
        except ValueError as err:  # the heads' settings are model.net's (the backbone's errors name their keys)
            raise with_config_path(err, "model.net", HEAD_SETTINGS) from None
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1) * 255, persistent=False)
        self.cam_thresholds = [float(t) for t in cam_thresholds] if has_background else [0.0]
        k = self.net.num_labels
        self.val_confusion = ConfusionMatrices(len(SEGMENTATION_BRANCHES), k, IGNORE_INDEX)
        self.val_cam_confusion = ConfusionMatrices(len(self.cam_thresholds), k, IGNORE_INDEX)
        # the segmentation setting: R, S and fused over all labels, the CAM on the classifier's predicted labels
        self.val_open_confusion = ConfusionMatrices(len(SEGMENTATION_BRANCHES), k, IGNORE_INDEX)
        self.val_open_cam_confusion = ConfusionMatrices(len(self.cam_thresholds), k, IGNORE_INDEX)
        self.teacher_step = -1  # global step for which ``teacher_source`` was set
        self.teacher_source = 0
        self.val_results: dict[str, Any] = {}

    def set_teacher(self, step: int, source: int) -> None:
        """Called by ``PWMCallback`` before every training step: 0 = teacher A (CAM), 1 = teacher B (R)."""
        self.teacher_step = step
        self.teacher_source = int(source)

    def forward(self, images: torch.Tensor) -> ASDTOutput:
        return self.net(images)

    def rgb(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised input -> float RGB in 0..255."""
        return unnormalize(images, self.image_mean, self.image_std)

    def rgb_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Undo the input normalisation and resize: (B, 3, H, W) -> (B, 3, *size) RGB in 0..255."""
        return rgb_at(self.rgb(images), size)

    valid_at = staticmethod(valid_at)

    def training_cams(self, images: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """Multi-scale CAMs: the scale-1 CAMs (detached) averaged with no-grad CAMs at the other scales."""
        size = cams.shape[-2:]
        maps = [cams.detach()]
        with torch.no_grad(), torch.profiler.record_function("asdt: extra CAM scales"):
            for scale in self.cam_scales[1:]:
                scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
                maps.append(self.net.forward_cams(scaled))
        return merge_multiscale_cams(maps, size, self.cam_relu_each_scale)

    def teacher_targets(self, images, image_labels, valid, out: ASDTOutput, cams, with_teacher_b=True):
        """``ASDTLoss.teacher_targets`` of a normalised batch and its network output ``out``."""
        return self.objective.teacher_targets(
            self.rgb(images), valid, image_labels, cams, out.refine_logits, with_teacher_b
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.teacher_step != self.global_step:
            raise RuntimeError(
                "the student's teacher was not set for this step: add asdt_lightning.lit.callbacks.PWMCallback "
                "to the Trainer's callbacks"
            )
        images, image_labels, valid = batch["image"], batch["labels"], batch["valid"]
        batch_size = images.shape[0]
        out = self.net(images)
        with torch.profiler.record_function("asdt: classification loss"):
            loss_cls = classification_loss(out.class_logits.float(), image_labels)
        if self.global_step < self.loss_weights.classifier_warmup:
            loss = self.loss_weights.cls * loss_cls + 0.0 * (out.refine_logits.sum() + out.student_logits.sum())
            terms: dict[str, Any] = {"train/loss": loss, "train/loss_cls": loss_cls}
        else:
            cams = self.training_cams(images, out.cams)  # the extra scales' forwards at the trainer's precision
            masks = batch.get("mask")
            if self.loss_weights.supervision == "ground_truth" and masks is None:
                raise ASDTUserError("model.loss.supervision=ground_truth needs training masks; this batch has none")
            with torch.autocast(images.device.type, enabled=False):  # labels, CRFs and pixel losses in fp32
                loss, terms = self.objective(
                    self.rgb(images), valid, image_labels, cams, out.refine_logits, out.student_logits, loss_cls,
                    self.global_step, self.teacher_source, masks,
                )  # fmt: skip
        self.log_dict(terms, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch_size)
        return loss

    def branch_probabilities(
        self,
        images: torch.Tensor,
        image_labels: torch.Tensor,
        out: ASDTOutput | None = None,
        restrict: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Per-branch outputs at the input resolution.

        Returns ``cam``: (B, C, H, W) CAMs normalised over ``image_labels`` (B, C), and ``refine``/``student``/
        ``fused``: (B, K, H, W) probabilities (fused: ``method.fusion.fuse_branches`` of R's and S's softmax with
        ``fusion``), over the image's labels, or over all labels with ``restrict=False``. ``out``: the network's
        output for ``images``, if already computed.
        """
        out = self.net(images) if out is None else out
        size = images.shape[-2:]
        allowed = allowed_labels(image_labels, self.has_background)[:, :, None, None] if restrict else None

        def probs(logits: torch.Tensor) -> torch.Tensor:
            logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=False)
            return torch.softmax(logits if allowed is None else logits.masked_fill(~allowed, float("-inf")), 1)

        cams = F.interpolate(out.cams.float(), size, mode="bilinear", align_corners=False)
        refine, student = probs(out.refine_logits), probs(out.student_logits)
        fused = fuse_branches(refine, student, self.fusion)
        return {"cam": normalize_cams(cams, image_labels), "refine": refine, "student": student, "fused": fused}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Both settings of the literature: with the image's ground-truth classes (pseudo masks), and without
        (segmentation: R, S and fused over all labels, the CAM over the classes the classifier predicts)."""
        images, image_labels, masks = batch["image"], batch["labels"], batch["mask"]
        out = self.net(images)
        thresholds = self.cam_thresholds if self.has_background else None
        predicted = predicted_image_labels(out.class_logits)
        for labels, restrict, confusion, cam_confusion in (
            (image_labels, True, self.val_confusion, self.val_cam_confusion),
            (predicted, False, self.val_open_confusion, self.val_open_cam_confusion),
        ):
            outputs = self.branch_probabilities(images, labels, out, restrict)
            confusion.update(torch.stack([outputs[b].argmax(1) for b in SEGMENTATION_BRANCHES]), masks)
            cam_confusion.update(cam_label_maps(outputs["cam"], labels, thresholds), masks)

    def validation_scores(
        self, confusion: ConfusionMatrices, cam_confusion: ConfusionMatrices
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Per-class IoU of every branch (the CAM at its best threshold) and that threshold's index; resets both."""
        cam_ious = [iou_from_confusion(c) for c in cam_confusion.compute()]
        best = max(range(len(cam_ious)), key=lambda i: float(torch.nanmean(cam_ious[i])))
        per_class = {"cam": cam_ious[best]}
        for branch, matrix in zip(SEGMENTATION_BRANCHES, confusion.compute(), strict=True):
            per_class[branch] = iou_from_confusion(matrix)
        confusion.reset()
        cam_confusion.reset()
        return per_class, best

    def on_validation_epoch_end(self) -> None:
        per_class, best = self.validation_scores(self.val_confusion, self.val_cam_confusion)
        open_class, open_best = self.validation_scores(self.val_open_confusion, self.val_open_cam_confusion)
        miou = {b: float(torch.nanmean(per_class[b])) for b in BRANCHES}
        miou_open = {b: float(torch.nanmean(open_class[b])) for b in BRANCHES}
        names = label_names(self.class_names, self.has_background)
        self.val_results = {
            "miou": miou,
            "cam_threshold": self.cam_thresholds[best],
            "per_class_iou": {b: dict(zip(names, v.tolist(), strict=True)) for b, v in per_class.items()},
            "miou_without_image_labels": miou_open,
            "cam_threshold_without_image_labels": self.cam_thresholds[open_best],
        }
        self.log_dict({f"val/miou_{b}": v for b, v in miou.items()}, prog_bar=False)
        self.log_dict({f"val/miou_{b}_without_image_labels": v for b, v in miou_open.items()}, prog_bar=False)
        self.log("val/cam_threshold", self.cam_thresholds[best])
        self.log("val_miou", miou["fused"], prog_bar=True, logger=False)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """``lit.optim.parameter_groups`` of the network: the heads' parameters get the head multipliers."""
        heads = [p for m in self.net.head_modules() for p in m.parameters()]
        return parameter_groups(self.net.parameters(), heads, self.optim)

    def configure_optimizers(self):
        o = self.optim  # weight decay is set per parameter group
        groups, fused = self.parameter_groups(), fused_allowed(self.trainer)
        optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, allow_fused=fused)
        return poly_schedule(optimizer, self.trainer, o.poly_power)
