"""The three ASDT heads on top of the shared backbone features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

HEAD_INITS = ("default", "xavier")  # PyTorch's default conv init | Xavier-uniform weights (the released code's)


class CAMHead(nn.Module):
    """Teacher A: a bias-free 1x1 conv giving one class activation map per foreground class.

    ``forward``: (B, D, h, w) features -> ((B, C, h, w) CAMs, (B, C) image logits = the classifier of the
    spatially pooled features, i.e. the spatial mean of the CAMs). With ``dropout > 0`` (the released code's
    ``Dropout2d(0.5)``) the logits come from channel-dropped features in training; the CAMs never do.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=False)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(features)
        if self.dropout is None or not self.training:
            return cams, cams.mean((2, 3))
        pooled = self.dropout(features).mean((2, 3), keepdim=True)
        return cams, self.classifier(pooled).flatten(1)


def init_head(module: nn.Module, init: str) -> None:
    """Re-initialise every conv's weight of a head: ``"xavier"`` (uniform; biases keep PyTorch's default, as in
    the released code) or ``"default"`` (left as built)."""
    if init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
    if init == "xavier":
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)


class SegmentationHead(nn.Module):
    """Refinement head R or student head S.

    ``skip_channels == 0`` (the paper's head): two dilated 3x3 convs, (B, D, h, w) -> (B, K, h, w) logits.
    ``skip_channels > 0``: the first dilated 3x3 conv, then, at stride 4, its upsampled output concatenated with a
    1x1 projection of the backbone's stride-4 features (a DeepLabV3+-style skip), a 3x3 conv and a 1x1 classifier:
    (B, D, h, w) and (B, D_low, h4, w4) -> (B, K, h4, w4) logits. At output stride 8 this doubles the resolution
    of the masks the head can draw, which small crops need.
    """

    def __init__(
        self,
        in_channels: int,
        num_labels: int,
        mid_channels: int = 256,
        dilation: int = 2,
        low_level_channels: int = 0,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=dilation, dilation=dilation)
        self.relu = nn.ReLU(inplace=True)
        self.skip_channels = skip_channels
        if skip_channels:
            self.skip = nn.Sequential(nn.Conv2d(low_level_channels, skip_channels, 1), nn.ReLU(inplace=True))
            self.fine = nn.Sequential(
                nn.Conv2d(mid_channels + skip_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True)
            )
            self.conv2 = nn.Conv2d(mid_channels, num_labels, 1)
        else:
            self.conv2 = nn.Conv2d(mid_channels, num_labels, 3, padding=dilation, dilation=dilation)

    def forward(self, features: torch.Tensor, low_level: torch.Tensor | None = None) -> torch.Tensor:
        x = self.relu(self.conv1(features))
        if self.skip_channels:
            if low_level is None:
                raise ValueError("this head has a skip connection: pass the stride-4 features too")
            x = F.interpolate(x, low_level.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fine(torch.cat([x, self.skip(low_level)], 1))
        return self.conv2(x)
