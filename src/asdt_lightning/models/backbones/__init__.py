"""Segmentation backbones behind one interface, with a small registry.

Every backbone maps (B, 3, H, W) images to (B, out_channels, ceil(H / os), ceil(W / os)) features, where
``os`` is its ``output_stride``. The torchvision ResNets reach output stride 8 or 16 by dilating their last
stages; the wide ResNet-38 of the WSSS literature is output stride 8 by construction.

``base`` holds the interface, ``registry`` the names, ``torchvision_resnet``, ``resnet38`` and
``timm_backbone`` (any timm CNN) the architectures (importing them registers them), ``weights`` the loading
of local files, ``batchnorm`` the freezing and
``build`` the one entry: :func:`build_backbone`, and :func:`check_backbone` for the checks it does first.
"""

from __future__ import annotations

from .base import Backbone
from .batchnorm import freeze_batchnorm
from .build import build_backbone, check_backbone
from .registry import BACKBONES, available_backbones, register_backbone
from .resnet38 import ResNet38
from .timm_backbone import TIMM_NAMES, TimmBackbone, is_timm_model
from .torchvision_resnet import DOWNLOAD_TIMEOUT_S, TorchvisionResNet, dilate_layer
from .weights import load_backbone_weights

__all__ = [
    "BACKBONES",
    "DOWNLOAD_TIMEOUT_S",
    "TIMM_NAMES",
    "Backbone",
    "ResNet38",
    "TimmBackbone",
    "TorchvisionResNet",
    "available_backbones",
    "build_backbone",
    "check_backbone",
    "dilate_layer",
    "freeze_batchnorm",
    "is_timm_model",
    "load_backbone_weights",
    "register_backbone",
]
