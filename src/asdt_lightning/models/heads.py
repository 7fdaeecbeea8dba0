"""The three ASDT heads on top of the shared backbone features."""

from __future__ import annotations

import torch
from torch import nn


class CAMHead(nn.Module):
    """Teacher A: a bias-free 1x1 conv giving one class activation map per foreground class.

    ``forward``: (B, D, h, w) features -> ((B, C, h, w) CAMs, (B, C) image logits = spatial mean of the CAMs).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(features)
        return cams, cams.mean((2, 3))


class SegmentationHead(nn.Module):
    """Refinement head R or student head S: two dilated 3x3 convs, (B, D, h, w) -> (B, K, h, w) logits."""

    def __init__(self, in_channels: int, num_labels: int, mid_channels: int = 256, dilation: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=dilation, dilation=dilation)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, num_labels, 3, padding=dilation, dilation=dilation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(features)))
