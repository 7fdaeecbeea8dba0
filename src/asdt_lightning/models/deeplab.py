"""Second-stage, fully supervised segmenters on the backbone registry.

- ``deeplabv2``: DeepLab-v2's ASPP (Chen et al. 2017): parallel dilated 3x3 convolutions straight to class
  logits, summed. The WSSS literature's second stage (DeepLabv2-ResNet101) uses rates 6, 12, 18, 24 at output
  stride 8 on 321-px crops.
- ``deeplabv3``: torchvision's DeepLab-v3 head (ASPP with image pooling, 256 channels, then a 3x3 conv and a 1x1
  classifier), on the same backbones; with ``resnet50`` / ``resnet101`` at output stride 8 this is torchvision's
  ``deeplabv3_resnet50/101`` (without the auxiliary head).

Both map (B, 3, H, W) to (B, K, ceil(H / os), ceil(W / os)) logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..errors import ASDTUserError
from .backbones import Backbone, build_backbone

ARCHITECTURES = ("deeplabv2", "deeplabv3")


class ASPPv2(nn.Module):
    """Sum of dilated 3x3 convolutions (one per rate) from features to class logits."""

    def __init__(self, in_channels: int, num_labels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_labels, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, K, h, w)."""
        return torch.stack([branch(features) for branch in self.branches]).sum(0)


class DeepLabV3Head(nn.Sequential):
    """torchvision's DeepLab-v3 head with configurable ASPP rates."""

    def __init__(self, in_channels: int, num_labels: int, rates: Sequence[int], channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, list(rates), channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_labels, 1),
        )


class Segmenter(nn.Module):
    """A registry backbone and a DeepLab head: (B, 3, H, W) images -> (B, K, h, w) logits at the feature size."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def head_modules(self) -> list[nn.Module]:
        """The newly initialised parts (higher learning rate)."""
        return [self.head]


def build_segmenter(
    arch: str,
    num_labels: int,
    backbone: str = "resnet101",
    output_stride: int = 8,
    rates: Sequence[int] = (6, 12, 18, 24),
    pretrained: bool = False,
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    frozen_stem: bool = False,
) -> Segmenter:
    """A DeepLab-v2 or -v3 segmenter with ``num_labels`` outputs on a registry backbone."""
    if arch not in ARCHITECTURES:
        raise ASDTUserError(f"unknown segmenter arch '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
    if not rates or any(int(r) < 1 for r in rates):
        raise ASDTUserError(f"rates must be a non-empty list of positive dilation rates, got {list(rates)}")
    net = build_backbone(backbone, output_stride, pretrained, weights, frozen_bn, frozen_stem)
    rates = [int(r) for r in rates]
    if arch == "deeplabv2":
        head: nn.Module = ASPPv2(net.out_channels, num_labels, rates)
    else:
        head = DeepLabV3Head(net.out_channels, num_labels, rates)
    return Segmenter(net, head)
