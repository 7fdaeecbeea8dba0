"""The three ASDT heads on top of the shared backbone features."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

HEAD_INITS = ("default", "xavier")  # PyTorch's default conv init | Xavier-uniform weights (the released code's)


CAM_POOLINGS = ("gap", "gmp", "topk")  # mean of all pixels | the max pixel | the mean of the top fraction


def pool_cams(cams: torch.Tensor, pooling: str = "gap", topk_fraction: float = 0.1) -> torch.Tensor:
    """(B, C, h, w) CAMs -> (B, C) image logits: their spatial mean (``gap``, CAM's own), maximum (``gmp``,
    ToCo's and DuPL's) or the mean of each map's ``ceil(topk_fraction * h * w)`` largest values (``topk``,
    between the two: a class scores on its strongest region, not on every pixel it co-occurs with)."""
    if pooling == "gap":
        return cams.mean((2, 3))
    flat = cams.flatten(2)
    if pooling == "gmp":
        return flat.amax(2)
    k = max(1, math.ceil(topk_fraction * flat.shape[2]))
    return flat.topk(k, dim=2).values.mean(2)


class CAMHead(nn.Module):
    """Teacher A: a bias-free 1x1 conv giving one class activation map per foreground class.

    ``forward``: (B, D, h, w) features -> ((B, C, h, w) CAMs, (B, C) image logits = the CAMs spatially pooled by
    ``pool_cams``: ``gap`` is the classifier of the mean feature). With ``dropout > 0`` (the released code's
    ``Dropout2d(0.5)``) the logits come from channel-dropped features in training; the CAMs never do.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
        pooling: str = "gap",
        topk_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in CAM_POOLINGS:
            raise ValueError(f"cam_pooling must be one of {', '.join(CAM_POOLINGS)}, got {pooling!r}")
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"cam_topk_fraction must lie in (0, 1], got {topk_fraction}")
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=False)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.pooling = pooling
        self.topk_fraction = topk_fraction

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(features)
        if self.dropout is None or not self.training:
            return cams, pool_cams(cams, self.pooling, self.topk_fraction)
        if self.pooling == "gap":  # the classifier of the pooled dropped features: one (B, D) product
            return cams, self.classifier(self.dropout(features).mean((2, 3), keepdim=True)).flatten(1)
        return cams, pool_cams(self.classifier(self.dropout(features)), self.pooling, self.topk_fraction)


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
