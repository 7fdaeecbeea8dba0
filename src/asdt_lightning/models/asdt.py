"""The unified ASDT network: one shared backbone, a CAM head (teacher A), a refinement head R (teacher B)
and a student head S. No losses in here."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ASDTUserError
from .backbones import Backbone, build_backbone, check_backbone
from .backbones.weights import backbone_key_count, check_cam_classifier, load_cam_classifier, read_cam_classifier
from .heads import CAMHead, SegmentationHead, init_head

log = logging.getLogger(__name__)


class ASDTOutput(NamedTuple):
    """Every branch's output for a (B, 3, H, W) input: CAMs at the backbone's resolution h = H / output_stride,
    segmentation logits at h_s = h, or H / 4 with the heads' stride-4 skip (``skip_channels > 0``)."""

    cams: torch.Tensor  # (B, C, h, w) raw class activation maps
    class_logits: torch.Tensor  # (B, C) image-level logits
    refine_logits: torch.Tensor  # (B, K, h_s, w_s) teacher B's segmentation logits
    student_logits: torch.Tensor  # (B, K, h_s, w_s) the student's segmentation logits


class ASDTNet(nn.Module):
    """Three branches on one backbone. ``K = C + 1`` with a background class, ``C`` without."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        has_background: bool = True,
        head_channels: int = 256,
        head_dilation: int = 2,
        skip_channels: int = 0,
        cam_dropout: float = 0.0,
        head_init: str = "default",
        cam_pooling: str = "gap",
        cam_topk_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 <= cam_dropout < 1:
            raise ASDTUserError(f"cam_dropout must lie in [0, 1), got {cam_dropout}")
        if skip_channels < 0:
            raise ASDTUserError(f"skip_channels must be >= 0 (0: no skip), got {skip_channels}")
        if skip_channels and not backbone.low_level_channels:
            raise ASDTUserError(
                f"skip_channels must be 0 for backbone {backbone.name} (it has no stride-4 features), "
                f"got {skip_channels}"
            )
        self.backbone = backbone
        self.num_classes = num_classes
        self.has_background = has_background
        self.num_labels = num_classes + int(has_background)
        self.cam_head = CAMHead(backbone.out_channels, num_classes, cam_dropout, cam_pooling, cam_topk_fraction)
        self.skip_channels = skip_channels
        self.refine_head, self.student_head = (
            SegmentationHead(
                backbone.out_channels,
                self.num_labels,
                head_channels,
                head_dilation,
                backbone.low_level_channels,
                skip_channels,
            )
            for _ in range(2)
        )
        for head in self.head_modules():
            init_head(head, head_init)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def head_modules(self) -> list[nn.Module]:
        """The newly initialised parts (higher learning rates in the paper's parameter groups)."""
        return [self.cam_head, self.refine_head, self.student_head]

    def forward(self, images: torch.Tensor) -> ASDTOutput:
        low_level, features = self.backbone(images, with_low_level=True)
        low_level = low_level if self.skip_channels else None
        cams, class_logits = self.cam_head(features)
        refine_logits = self.refine_head(features, low_level)
        return ASDTOutput(cams, class_logits, refine_logits, self.student_head(features, low_level))

    def forward_cams(self, images: torch.Tensor) -> torch.Tensor:
        """CAM branch only: (B, 3, H, W) -> (B, C, h, w); used for the extra CAM scales."""
        return self.cam_head(self.backbone(images))[0]


def build_asdt_net(
    backbone: str,
    num_classes: int,
    has_background: bool = True,
    output_stride: int = 16,
    pretrained: bool = False,
    weights: str | None = None,
    frozen_bn: bool = False,
    frozen_stem: bool = False,
    head_channels: int = 256,
    head_dilation: int = 2,
    skip_channels: int = 0,
    cam_dropout: float = 0.0,
    head_init: str = "default",
    cam_pooling: str = "gap",
    cam_topk_fraction: float = 0.1,
) -> ASDTNet:
    """Build the backbone by registry name and put the three heads on it.

    A ``weights`` file with PSA's ``fc8.weight`` (``res38_cls.pth``: 20 VOC classes x 4096) also sets the CAM
    head's classifier, when its shape fits (an ASDTUserError otherwise); the loading is logged in one line.
    """
    cam_classifier = {}
    if weights:
        check_backbone(backbone, weights, pretrained=pretrained)  # the cheap refusals come first
        cam_classifier = read_cam_classifier(weights)
        if cam_classifier:  # a class count that cannot fit is refused before the backbone is built
            check_cam_classifier(cam_classifier, f"weights file {weights}", num_classes)
    body = build_backbone(
        backbone,
        output_stride=output_stride,
        pretrained=pretrained,
        weights=weights,
        frozen_bn=frozen_bn,
        frozen_stem=frozen_stem,
    )
    net = ASDTNet(
        body,
        num_classes,
        has_background,
        head_channels,
        head_dilation,
        skip_channels,
        cam_dropout,
        head_init,
        cam_pooling,
        cam_topk_fraction,
    )
    if weights:
        keys = backbone_key_count(body)
        report = f"backbone.weights: {keys} of {keys} backbone keys matched"
        if cam_classifier:
            loaded = load_cam_classifier(net.cam_head.classifier, cam_classifier, f"weights file {weights}")
            report += f"; {loaded} loaded into the CAM head"
        log.info(report)
    return net
