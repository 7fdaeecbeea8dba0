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


def job_size(value: Any, key: str) -> int:
    """``${asdt.job_size:${trainer.devices},trainer.devices}``: a positive count for sizing a cluster job."""
    count = int(value)
    if count < 1:
        raise ValueError(
            f"{key}={value}, but hydra/launcher=slurm sizes each job's tasks and GPUs from it: "
            f"set {key} to the number per node explicitly (e.g. {key}=4)"
        )
    return count


OmegaConf.register_new_resolver("asdt.job_size", job_size, replace=True)
