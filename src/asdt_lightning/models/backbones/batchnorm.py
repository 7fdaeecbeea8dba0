"""Freezing BatchNorm: every BatchNorm2d swapped for a FrozenBatchNorm2d with the same statistics."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


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
