"""Segmentation backbones behind one interface, with a small registry.

Every backbone maps (B, 3, H, W) images to (B, out_channels, ceil(H / os), ceil(W / os)) features, where
``os`` is its ``output_stride``. The torchvision ResNets reach output stride 8 or 16 by dilating their last
stages; the wide ResNet-38 of the WSSS literature is output stride 8 by construction.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import ASDTUserError
from ..io_utils import unreadable_torch_file

__all__ = [
    "BACKBONES",
    "Backbone",
    "ResNet38",
    "TorchvisionResNet",
    "available_backbones",
    "build_backbone",
    "load_backbone_weights",
    "register_backbone",
]

DOWNLOAD_TIMEOUT_S = 20.0
_KEY_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "fc8.", "classifier.", "aux_classifier.")


class Backbone(nn.Module):
    """Base class: ``forward`` maps (B, 3, H, W) to (B, out_channels, ceil(H / os), ceil(W / os)).

    ``forward_levels`` also returns the stride-4 features, (B, low_level_channels, ceil(H / 4), ceil(W / 4)),
    for heads that predict at stride 4.
    """

    name: str = "backbone"
    out_channels: int
    low_level_channels: int
    output_stride: int

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """(B, 3, H, W) -> (stride-4 features, final features)."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, with_low_level: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The final features, or with ``with_low_level`` the pair of ``forward_levels`` (module hooks see both)."""
        levels = self.forward_levels(x)
        return levels if with_low_level else levels[1]

    def stem_modules(self) -> list[nn.Module]:
        """The first layers, frozen by ``frozen_stem=True``."""
        return []


BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator adding a factory ``f(output_stride, pretrained) -> Backbone`` to ``BACKBONES``."""

    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is already registered")
        BACKBONES[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Sorted names accepted by ``build_backbone``."""
    return sorted(BACKBONES)


# ----------------------------------------------------------------------------------------------------------
# torchvision ResNets
# ----------------------------------------------------------------------------------------------------------


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
        _check_output_stride(f"resnet{depth}", output_stride, self.OUTPUT_STRIDES)
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


_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
}


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
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


def _torchvision_factory(depth: int) -> Callable[..., Backbone]:
    def factory(output_stride: int = 16, pretrained: bool = False) -> Backbone:
        backbone = TorchvisionResNet(depth, output_stride)
        if pretrained:
            _load_checked(backbone, _imagenet_state_dict(backbone.name), "torchvision ImageNet weights")
        return backbone

    factory.__doc__ = f"torchvision ResNet-{depth} (output stride 8, 16 or 32)."
    return factory


for _depth in TorchvisionResNet.DEPTHS:
    register_backbone(f"resnet{_depth}")(_torchvision_factory(_depth))


# ----------------------------------------------------------------------------------------------------------
# ResNet-38 (Wu et al., "Wider or Deeper"), with the key names of the WSSS community's converted weights
# ----------------------------------------------------------------------------------------------------------


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
        _check_output_stride("resnet38", output_stride, self.OUTPUT_STRIDES)
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
def resnet38(output_stride: int = 8, pretrained: bool = False) -> Backbone:
    """Wide ResNet-38 (output stride 8 only; no downloadable weights)."""
    if pretrained:
        raise ASDTUserError(
            "resnet38 has no downloadable weights; set backbone.pretrained=false and pass a converted "
            "ResNet-38 ImageNet file with backbone.weights=/path/to/res38.pth"
        )
    return ResNet38(output_stride)


# ----------------------------------------------------------------------------------------------------------
# Building, weights, freezing
# ----------------------------------------------------------------------------------------------------------


def build_backbone(
    name: str,
    output_stride: int = 16,
    pretrained: bool = False,
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    frozen_stem: bool = False,
) -> Backbone:
    """Build a registered backbone, optionally with ImageNet (``pretrained``) or local (``weights``) weights.

    ``frozen_bn`` swaps every BatchNorm2d for a FrozenBatchNorm2d with the same statistics (after loading);
    ``frozen_stem`` stops gradients into ``stem_modules()``.
    """
    if name not in BACKBONES:
        raise ASDTUserError(f"unknown backbone '{name}'; choose one of: {', '.join(available_backbones())}")
    if pretrained and weights:
        raise ASDTUserError(
            "backbone.pretrained=true and backbone.weights are both set; use one of them "
            "(backbone.pretrained=false to load backbone.weights)"
        )
    if weights:
        _check_weights_file(weights)
    backbone = BACKBONES[name](output_stride=output_stride, pretrained=pretrained)
    if weights:
        load_backbone_weights(backbone, weights)
    if frozen_bn:
        freeze_batchnorm(backbone)
    if frozen_stem:
        for module in backbone.stem_modules():
            module.requires_grad_(False)
    return backbone


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local state dict (raw, or under ``state_dict`` / ``model``) into ``backbone``, strictly.

    Prefixes such as ``module.`` are stripped and classifier keys (``fc.*``, ``fc8.*``) dropped; any other
    difference (missing, unexpected or mis-shaped keys) raises ASDTUserError before anything is loaded.
    """
    path = _check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or a pickle with arbitrary objects
        raise ASDTUserError(f"cannot use backbone.weights: {unreadable_torch_file(path, error)}") from None
    for nested in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(nested), Mapping):
            state = state[nested]
    if not isinstance(state, Mapping):
        raise ASDTUserError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict; "
            f"save one with torch.save(model.state_dict(), path)"
        )
    _load_checked(backbone, state, f"weights file {path}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a FrozenBatchNorm2d with the same values."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, attr).copy_(getattr(child, attr))
            setattr(module, child_name, frozen.to(device=child.weight.device, dtype=child.weight.dtype))
        else:
            freeze_batchnorm(child)
    return module


def _load_checked(backbone: Backbone, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Normalise ``state``'s keys, check they match ``backbone`` exactly, then load strictly."""
    cleaned = {}
    for key, value in state.items():
        key = _strip_prefixes(str(key))
        if not (key.endswith("num_batches_tracked") or key.startswith(_CLASSIFIER_PREFIXES)):
            cleaned[key] = value
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in cleaned]
    unexpected = [k for k in cleaned if k not in own]
    mis_shaped = [
        f"{k} {tuple(getattr(cleaned[k], 'shape', ()))} vs {tuple(own[k].shape)}"
        for k in own
        if k in cleaned and not (torch.is_tensor(cleaned[k]) and cleaned[k].shape == own[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        matched = len(own) - len(missing) - len(mis_shaped)
        problems = [f"{matched} of {len(own)} keys matched"]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if names:
                problems.append(f"{label} e.g. {names[:3]}")
        raise ASDTUserError(f"{source} does not match backbone {backbone.name}: {'; '.join(problems)}")
    # BatchNorm's num_batches_tracked counters are not part of the check; keep the backbone's own.
    full = {**backbone.state_dict(), **cleaned}
    backbone.load_state_dict(full, strict=True)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _check_weights_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ASDTUserError(f"backbone weights file not found: {path} (check backbone.weights)")
    return path


def _check_output_stride(name: str, output_stride: int, supported: tuple[int, ...]) -> None:
    if output_stride not in supported:
        choices = ", ".join(map(str, supported))
        raise ASDTUserError(f"{name} does not support output_stride={output_stride}; use one of: {choices}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
