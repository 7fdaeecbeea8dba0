"""The second stage: a fully supervised segmenter trained on pseudo masks, validated on real masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..metrics import ConfusionMatrix, iou_from_confusion, label_names
from ..models.deeplab import build_segmenter
from ..params import params_from
from .optim import SegmenterOptimizerParams, build_optimizer, fused_allowed, poly_schedule


class SegmenterModule(L.LightningModule):
    """DeepLab-v2/-v3 on a registry backbone; cross-entropy on (pseudo) masks with 255 ignored; poly LR.

    All arguments are plain values (saved as hyper-parameters, so a checkpoint rebuilds the model).
    ``segmenter``: keyword arguments of ``build_segmenter`` (arch, backbone, output_stride, rates, pretrained,
    weights, frozen_bn, frozen_stem). ``optimizer``: overrides of ``SegmenterOptimizerParams``.
    """

    def __init__(
        self,
        segmenter: dict[str, Any],
        class_names: Sequence[str],
        has_background: bool = True,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        optimizer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.has_background = has_background
        self.num_labels = len(self.class_names) + int(has_background)
        self.net = build_segmenter(num_labels=self.num_labels, **segmenter)
        self.optim = params_from(SegmenterOptimizerParams, optimizer, "optimizer")
        self.val_confusion = ConfusionMatrix(self.num_labels, IGNORE_INDEX)
        self.val_results: dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, H, W) logits at the input resolution."""
        logits = self.net(images)
        return F.interpolate(logits.float(), images.shape[-2:], mode="bilinear", align_corners=False)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, H, W) softmax at the input resolution."""
        return torch.softmax(self(images), 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        masks = batch["mask"]
        logits = self(batch["image"])
        if bool((masks != IGNORE_INDEX).any()):
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        else:  # a batch without a labelled pixel (all below the export's confidence threshold)
            loss = logits.sum() * 0.0
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=masks.shape[0])
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=masks.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_confusion.update(self(batch["image"]).argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        iou = iou_from_confusion(self.val_confusion.compute())
        self.val_confusion.reset()
        names = label_names(self.class_names, self.has_background)
        miou = float(torch.nanmean(iou))
        self.val_results = {"miou": miou, "per_class_iou": dict(zip(names, iou.tolist(), strict=True))}
        self.log("val/miou", miou, prog_bar=True)

    def configure_optimizers(self):
        o = self.optim
        head_ids = {id(p) for m in self.net.head_modules() for p in m.parameters()}
        params = [p for p in self.net.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if id(p) not in head_ids], "lr": o.lr},
            {"params": [p for p in params if id(p) in head_ids], "lr": o.lr * o.head_lr_mult},
        ]
        groups = [g for g in groups if g["params"]]
        fused = fused_allowed(self.trainer)
        optimizer = build_optimizer(o.name, groups, o.lr, o.momentum, o.weight_decay, allow_fused=fused)
        return poly_schedule(optimizer, self.trainer, o.poly_power)
