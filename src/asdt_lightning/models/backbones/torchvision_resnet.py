"""torchvision's ResNet-18/50/101 as dilated backbones (output stride 8, 16 or 32), with their ImageNet weights."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import ClassVar

import torch
import torchvision
from torch import nn

from ...errors import ASDTUserError
from .base import Backbone, check_output_stride
from .registry import register_backbone
from .weights import load_checked

DOWNLOAD_TIMEOUT_S = 20.0
_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
}


def dilate_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a ResNet stage's stride into dilation, in place (DeepLab convention).

    Stride-2 convs (the 3x3 and the 1x1 downsample) get stride 1; the first block's 3x3 convs use
    ``previous_dilation`` and the remaining blocks' 3x3 convs use ``dilation`` (padding = dilation).
    """
    for index, block in enumerate(layer):
        d = previous_dilation if index == 0 else dilation
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (d, d), (d, d)


class TorchvisionResNet(Backbone):
    """torchvision ResNet-18/50/101 without avgpool/fc, features after layer4; output stride 8, 16 or 32.

    Submodule names follow torchvision, so its state dicts (minus ``fc``) load unchanged.
    """

    DEPTHS: ClassVar[dict[int, int]] = {18: 512, 50: 2048, 101: 2048}  # depth -> out_channels
    OUTPUT_STRIDES: ClassVar[tuple[int, ...]] = (8, 16, 32)

    def __init__(self, depth: int, output_stride: int = 16) -> None:
        if depth not in self.DEPTHS:
            raise ASDTUserError(f"unsupported ResNet depth {depth}; choose one of {sorted(self.DEPTHS)}")
        check_output_stride(f"resnet{depth}", output_stride, self.OUTPUT_STRIDES)
        super().__init__()
        self.name = f"resnet{depth}"
        self.out_channels = self.DEPTHS[depth]
        self.low_level_channels = 64 if depth == 18 else 256
        self.output_stride = output_stride
        net = getattr(torchvision.models, self.name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if output_stride == 8:
            dilate_layer(self.layer3, dilation=2, previous_dilation=1)
            dilate_layer(self.layer4, dilation=4, previous_dilation=2)
        elif output_stride == 16:
            dilate_layer(self.layer4, dilation=2, previous_dilation=1)

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (layer1's stride-4 features, (B, out_channels, ceil(H / os), ceil(W / os)))."""
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``name`` (torch hub cache or download, failing fast offline)."""
    enum_name, member = _TORCHVISION_WEIGHTS[name].split(".")
    weights = getattr(torchvision.models, enum_name)[member]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as error:  # URLError, timeouts, hash mismatch
        raise ASDTUserError(
            f"downloading the ImageNet weights for {name} ({weights.url}) failed: {_first_line(error)}; "
            f"pass a local file instead with backbone.weights=/path/to/file.pth"
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _torchvision_factory(depth: int) -> Callable[..., Backbone]:
    def factory(output_stride: int = 16, pretrained: bool = False) -> Backbone:
        backbone = TorchvisionResNet(depth, output_stride)
        if pretrained:
            load_checked(backbone, imagenet_state_dict(backbone.name), "torchvision ImageNet weights")
        return backbone

    factory.__doc__ = f"torchvision ResNet-{depth} (output stride 8, 16 or 32)."
    return factory


for _depth in TorchvisionResNet.DEPTHS:
    register_backbone(f"resnet{_depth}")(_torchvision_factory(_depth))
