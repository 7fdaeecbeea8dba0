"""Building a registered backbone (weights, frozen BatchNorm, frozen stem), and the cheap checks done first."""

from __future__ import annotations

from pathlib import Path

from ...errors import ASDTUserError
from .base import Backbone
from .batchnorm import freeze_batchnorm
from .registry import BACKBONES, check_backbone_name
from .timm_backbone import is_timm_model, timm_factory
from .weights import check_weights_file, load_backbone_weights


def check_backbone(name: str, weights: str | Path | None = None, *, pretrained: bool = False) -> None:
    """Refuse, before anything is built, an unregistered ``name``, ``pretrained`` together with ``weights``, or a
    ``weights`` file that does not exist (an ``ASDTUserError`` each)."""
    if name not in BACKBONES and not is_timm_model(name):  # backbone=timm backbone.name=<any timm model>
        check_backbone_name(name)
    if pretrained and weights:
        raise ASDTUserError(
            "backbone.pretrained=true and backbone.weights are both set; use one of them "
            "(backbone.pretrained=false to load backbone.weights)"
        )
    if weights is not None:
        check_weights_file(weights)


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
    check_backbone(name, weights or None, pretrained=pretrained)
    factory = BACKBONES.get(name) or timm_factory(name)
    backbone = factory(output_stride=output_stride, pretrained=pretrained)
    if weights:
        load_backbone_weights(backbone, weights)
    if frozen_bn:
        freeze_batchnorm(backbone)
    if frozen_stem:
        for module in backbone.stem_modules():
            module.requires_grad_(False)
    return backbone
