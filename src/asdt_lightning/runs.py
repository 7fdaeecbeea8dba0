"""What every training entry point does around ``fit``: the run folder's config, the Trainer with atomic
checkpoints and loggers, fit-then-validate with its wall time, and ``metrics.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from .hardware import trainer_settings
from .io_utils import atomic_write_text
from .lit.checkpoint_io import AtomicCheckpointIO
from .tracking import build_loggers, finish_loggers


def start_run(cfg: DictConfig, plain: Mapping[str, Any], out_dir: Path) -> list[Logger]:
    """Write ``config_resolved.yaml`` into the run folder; the configured loggers, each given the config."""
    atomic_write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return build_loggers(plain.get("logger"), {k: v for k, v in plain.items() if k != "hydra"})


def build_trainer(
    trainer: Mapping[str, Any],
    out_dir: Path,
    callbacks: Sequence[L.Callback],
    loggers: Sequence[Logger],
    **overrides: Any,
) -> L.Trainer:
    """A Trainer of the ``trainer`` config (``hardware.trainer_settings``) whose checkpoints are written atomically."""
    return L.Trainer(
        **{**trainer_settings(dict(trainer)), **overrides},
        callbacks=list(callbacks),
        logger=list(loggers) or False,
        default_root_dir=out_dir,
        plugins=[AtomicCheckpointIO()],
    )


def fit_and_validate(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None
) -> dict[str, Any]:
    """Fit (resuming from ``ckpt_path`` if given), then validate the final weights; the module's ``val_results``
    with ``global_step`` and ``train_seconds`` (the fit's wall time)."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - start
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {**module.val_results, "global_step": trainer.global_step, "train_seconds": round(train_seconds, 1)}


def finish_run(out_dir: Path, metrics: Mapping[str, Any], loggers: Sequence[Logger], summary=None) -> None:
    """Write ``metrics.json`` atomically and close the loggers (``summary``: what W&B's run summary gets)."""
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    finish_loggers(loggers, metrics if summary is None else summary)
