"""Hydra configs at the entry points: required values checked, then handed on as plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ASDTUserError


def require_values(cfg: DictConfig, hints: Mapping[str, str]) -> None:
    """Refuse a config whose mandatory (``???``) keys were not given, with how to give each one.

    Args:
        hints: key -> what to pass, e.g. ``{"ckpt": "ckpt=outputs/<run>/checkpoints/last.ckpt"}``.
    """
    missing = [hint for key, hint in hints.items() if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ASDTUserError(f"missing required value{'s' if len(missing) > 1 else ''}: {'; '.join(missing)}")


def plain_config(cfg: DictConfig, required: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resolved config as a plain dict, after ``require_values``."""
    require_values(cfg, required or {})
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
