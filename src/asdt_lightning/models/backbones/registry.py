"""The registry of backbone factories, by name."""

from __future__ import annotations

from collections.abc import Callable

from ...errors import ASDTUserError
from .base import Backbone

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


def check_backbone_name(name: str) -> None:
    """Refuse a name that is not registered, listing the registered ones."""
    if name not in BACKBONES:
        raise ASDTUserError(
            f"unknown backbone '{name}'; choose one of: {', '.join(available_backbones())}, or any timm model name "
            "(backbone=timm backbone.name=<name>)"
        )
