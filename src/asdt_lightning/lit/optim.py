"""The optimisers of both training stages: SGD with momentum or AdamW, fused kernels, and poly decay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused SGD/AdamW kernels run


def build_optimizer(
    name: str,
    groups: Sequence[dict[str, Any]],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    allow_fused: bool = True,
) -> torch.optim.Optimizer:
    """``sgd`` or ``adamw`` over parameter ``groups`` (group keys override ``lr`` and ``weight_decay``).

    Fused where allowed and every parameter lives on a supported device: one kernel for all parameters instead
    of a loop (AdamW on ResNet-18, CPU: 7.5 ms instead of 38 ms a step). Lightning refuses gradient clipping
    with fused optimisers under mixed precision: pass ``allow_fused=False`` when clipping.
    """
    fused = allow_fused and all(p.device.type in FUSED_DEVICES for g in groups for p in g["params"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")


def fused_allowed(trainer: L.Trainer) -> bool:
    """Fused kernels unless the trainer clips gradients (which Lightning cannot do for them)."""
    return not trainer.gradient_clip_val


def poly_schedule(optimizer: torch.optim.Optimizer, trainer: L.Trainer, power: float) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` dict: ``optimizer`` and a per-step ``(1 - t / T) ** power`` decay
    over ``trainer.max_steps`` (or the estimated number of steps)."""
    total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
    total = max(int(total), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - min(step, total) / total) ** power
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
