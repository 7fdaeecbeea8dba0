"""The wide ResNet-38 of the WSSS literature (Wu et al., "Wider or Deeper"), output stride 8, with the key names
of the community's converted weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...errors import ASDTUserError
from .base import Backbone, check_output_stride
from .registry import register_backbone


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    padding = dilation * (kernel // 2)
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)


class _PreActBlock(nn.Module):
    """Pre-activation basic block: two 3x3 convs; the 1x1 shortcut sees the activated input."""

    def __init__(
        self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1
    ) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = _conv(in_ch, mid_ch, 3, stride, first_dilation)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = _conv(mid_ch, out_ch, 3, 1, dilation)
        self.has_shortcut_conv = in_ch != out_ch or stride != 1
        if self.has_shortcut_conv:
            self.conv_branch1 = _conv(in_ch, out_ch, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch2 = torch.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(branch2) if self.has_shortcut_conv else x
        branch2 = self.conv_branch2a(branch2)
        branch2 = self.conv_branch2b1(torch.relu(self.bn_branch2b1(branch2)))
        return branch2 + shortcut


class _PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: 1x1 (out/4), dilated 3x3 (out/2), 1x1 (out), with dropout; 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = _conv(in_ch, out_ch // 4, 1)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = _conv(out_ch // 4, out_ch // 2, 3, 1, dilation)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = _conv(out_ch // 2, out_ch, 1)
        self.conv_branch1 = _conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch2 = torch.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(branch2)
        branch2 = self.conv_branch2a(branch2)
        branch2 = self.conv_branch2b1(self.dropout_2b1(torch.relu(self.bn_branch2b1(branch2))))
        branch2 = self.conv_branch2b2(self.dropout_2b2(torch.relu(self.bn_branch2b2(branch2))))
        return branch2 + shortcut


class ResNet38(Backbone):
    """The wide ResNet-38 of PSA / AffinityNet / RRM: (B, 3, H, W) -> (B, 4096, ceil(H / 8), ceil(W / 8)).

    Attribute names (``conv1a``, ``b2`` ... ``b7``, ``bn7``) match the converted ``res38_cls.pth``-style files.
    """

    OUTPUT_STRIDES: ClassVar[tuple[int, ...]] = (8,)

    def __init__(self, output_stride: int = 8) -> None:
        check_output_stride("resnet38", output_stride, self.OUTPUT_STRIDES)
        super().__init__()
        self.name = "resnet38"
        self.out_channels = 4096
        self.low_level_channels = 256
        self.output_stride = output_stride
        self.conv1a = _conv(3, 64, 3)
        self.b2 = _PreActBlock(64, 128, 128, stride=2)
        self.b2_1 = _PreActBlock(128, 128, 128)
        self.b2_2 = _PreActBlock(128, 128, 128)
        self.b3 = _PreActBlock(128, 256, 256, stride=2)
        self.b3_1 = _PreActBlock(256, 256, 256)
        self.b3_2 = _PreActBlock(256, 256, 256)
        self.b4 = _PreActBlock(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", _PreActBlock(512, 512, 512))
        self.b5 = _PreActBlock(512, 512, 1024, dilation=2, first_dilation=1)
        self.b5_1 = _PreActBlock(1024, 512, 1024, dilation=2, first_dilation=2)
        self.b5_2 = _PreActBlock(1024, 512, 1024, dilation=2, first_dilation=2)
        self.b6 = _PreActBottleneck(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = _PreActBottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (b3_2's stride-4 features, (B, 4096, ceil(H / 8), ceil(W / 8)))."""
        x = self.conv1a(x)
        low = x
        for name in self._block_names():
            x = getattr(self, name)(x)
            if name == "b3_2":
                low = x
        return low, torch.relu(self.bn7(x))

    @staticmethod
    def _block_names() -> list[str]:
        return [
            *("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"),
            *(f"b4_{i}" for i in range(1, 6)),
            *("b5", "b5_1", "b5_2", "b6", "b7"),
        ]

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1a]


@register_backbone("resnet38")
def build_resnet38(output_stride: int = 8, pretrained: bool = False) -> Backbone:
    """Wide ResNet-38 (output stride 8 only; no downloadable weights)."""
    if pretrained:
        raise ASDTUserError(
            "resnet38 has no downloadable weights; set backbone.pretrained=false and pass a converted "
            "ResNet-38 ImageNet file with backbone.weights=/path/to/res38.pth"
        )
    return ResNet38(output_stride)
