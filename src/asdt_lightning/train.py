"""Hydra entry point: train ASDT and report per-branch validation mIoU.

    python -m asdt_lightning.train                                 # synthetic default, CPU, minutes
    python -m asdt_lightning.train dataset=voc dataset.root=/data/VOCdevkit backbone=resnet101 trainer=gpu
    python -m asdt_lightning.train pwm.duty=0.5 pwm.period=150 trainer.max_steps=2000

Writes to the run's Hydra folder: ``metrics.json``, ``config_resolved.yaml``, ``checkpoints/`` and logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from .data.datamodule import SegmentationDataModule
from .data.registry import build_datamodule as build_dataset_module
from .errors import ASDTUserError, run_or_exit
from .hardware import trainer_settings
from .io_utils import atomic_write_text
from .lit.callbacks import PWMCallback
from .lit.checkpoint_io import AtomicCheckpointIO
from .lit.module import ASDTModule
from .metrics import miou_table
from .models.backbones import available_backbones
from .tracking import build_callbacks, build_loggers, check_tracking, finish_loggers


def check_config(cfg: DictConfig) -> None:
    """Cheap checks of the whole config, before any data or model is built."""
    PWMCallback(**cfg.pwm)  # validates period, duty, phase, warmup
    if cfg.backbone.name not in available_backbones():
        raise ASDTUserError(
            f"unknown backbone '{cfg.backbone.name}'; choose one of: {', '.join(available_backbones())}"
        )
    weights = cfg.backbone.weights
    if weights is not None and not Path(weights).expanduser().is_file():
        raise ASDTUserError(f"backbone.weights file not found: {weights}")
    check_tracking(OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else {}, cfg.tracking)


def build_datamodule(data: dict[str, Any], seed: int) -> SegmentationDataModule:
    """The DataModule of ``dataset=synthetic|voc|coco_stuff`` (synthetic generated first if needed), after the
    same cheap root and list check as ``python -m asdt_lightning.prepare``."""
    return build_dataset_module(data, seed)


def build_module(cfg: dict[str, Any], class_names: list[str]) -> ASDTModule:
    model, backbone, data = cfg["model"], cfg["backbone"], cfg["dataset"]
    return ASDTModule(
        net={**model["net"], "backbone": backbone["name"], **{k: v for k, v in backbone.items() if k != "name"}},
        class_names=class_names,
        has_background=data["has_background"],
        image_mean=data["mean"],
        image_std=data["std"],
        cam_scales=model["cam_scales"],
        loss=model["loss"],
        teacher_a=model["teacher_a"],
        teacher_b=model["teacher_b"],
        pairwise=model["pairwise"],
        optimizer=model["optimizer"],
        label_upsample=model["label_upsample"],
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Check, build, fit, validate; returns (and writes) the metrics."""
    check_config(cfg)
    out_dir = Path(cfg.output_dir)
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(plain["dataset"], cfg.seed)
    module = build_module(plain, list(datamodule.class_names))
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    atomic_write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    callbacks = [
        PWMCallback(**plain["pwm"]),
        ModelCheckpoint(
            dirpath=out_dir / "checkpoints",
            filename="best-step{step:06d}",
            auto_insert_metric_name=False,
            monitor="val/miou_fused",
            mode="max",
            save_top_k=1,
            save_last=True,
        ),
    ]
    loggers = build_loggers(plain.get("logger"), {k: v for k, v in plain.items() if k != "hydra"})
    callbacks += build_callbacks(plain["tracking"], plain["trainer"], out_dir, has_loggers=bool(loggers))
    trainer = L.Trainer(
        **trainer_settings(plain["trainer"]),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=out_dir,
        plugins=[AtomicCheckpointIO()],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    train_seconds = time.perf_counter() - start
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {
        **module.val_results,
        "global_step": trainer.global_step,
        "train_seconds": round(train_seconds, 1),
        "precision": str(trainer.precision),
        "pwm": plain["pwm"],
        "dataset": plain["dataset"]["name"],
        "backbone": plain["backbone"]["name"],
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    finish_loggers(loggers, metrics)
    branch_names = {
        "cam": "CAM teacher (A)",
        "refine": "refinement teacher (R)",
        "student": "student (S)",
        "fused": "fused (max R, S)",
    }
    table = miou_table({branch_names[k]: v for k, v in metrics["miou"].items()})
    print(f"\n{table}\n(CAM at its best background threshold {metrics['cam_threshold']}; outputs in {out_dir})")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = run_or_exit(train, cfg)
    return metrics["miou"]["fused"]


if __name__ == "__main__":
    main()
