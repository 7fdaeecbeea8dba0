"""Hydra entry point of the second stage: train a fully supervised segmenter on exported pseudo masks.

    python -m asdt_lightning.segment pseudo_masks=outputs/<run>/pseudo_masks/train          # synthetic, CPU
    python -m asdt_lightning.segment dataset=voc dataset.root=/data/VOCdevkit pseudo_masks=/data/pseudo/train_aug \\
        backbone=resnet101 backbone.output_stride=8 backbone.pretrained=true segmenter.rates=[6,12,18,24] \\
        optimizer.name=sgd optimizer.lr=2.5e-4 optimizer.head_lr_mult=10 trainer=gpu trainer.max_steps=20000

Writes ``metrics.json`` (validation mIoU on the real masks, at the validation transform's size),
``config_resolved.yaml`` and ``checkpoints/last.ckpt`` into the run folder; score the checkpoint at the original
image size with ``python -m asdt_lightning.evaluate ckpt=<run>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from .cli import run_preflight
from .config import plain_config
from .data.pseudo_masks import pseudo_mask_datamodule
from .errors import ASDTUserError, run_or_exit
from .lit.segmenter import SegmenterModule
from .metrics import per_class_table
from .models.backbones import check_backbone
from .models.deeplab import ARCHITECTURES
from .runs import build_trainer, finish_run, fit_and_validate, start_run


def check_config(plain: dict[str, Any]) -> None:
    """Cheap checks before any data or model is built."""
    backbone, arch = plain["backbone"], plain["segmenter"]["arch"]
    check_backbone(backbone["name"], backbone.get("weights"))
    if arch not in ARCHITECTURES:
        raise ASDTUserError(f"unknown segmenter.arch '{arch}'; choose one of {', '.join(ARCHITECTURES)}")


def build_segmenter_module(plain: dict[str, Any], class_names: list[str], has_background: bool) -> SegmenterModule:
    backbone = plain["backbone"]
    return SegmenterModule(
        segmenter={
            "arch": plain["segmenter"]["arch"],
            "rates": list(plain["segmenter"]["rates"]),
            "backbone": backbone["name"],
            **{k: v for k, v in backbone.items() if k != "name"},
        },
        class_names=class_names,
        has_background=has_background,
        image_mean=plain["dataset"]["mean"],
        image_std=plain["dataset"]["std"],
        optimizer=plain["optimizer"],
    )


def segment(cfg: DictConfig) -> dict[str, Any]:
    """Check, build, fit, validate on the real masks; returns (and writes) the metrics."""
    hint = "pseudo_masks=<folder> (export one with python -m asdt_lightning.pseudo_labels)"
    plain = plain_config(cfg, {"pseudo_masks": hint})
    check_config(plain)
    out_dir = Path(plain["output_dir"])
    L.seed_everything(plain["seed"], workers=True)
    datamodule = pseudo_mask_datamodule(plain["dataset"], plain["seed"], plain["pseudo_masks"])
    module = build_segmenter_module(plain, datamodule.class_names, datamodule.has_background)
    loggers = start_run(cfg, plain, out_dir)
    last = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer = build_trainer(plain["trainer"], out_dir, [last], loggers)
    metrics = {
        **fit_and_validate(trainer, module, datamodule, plain.get("ckpt_path")),
        "pseudo_masks": str(plain["pseudo_masks"]),
        "dataset": plain["dataset"]["name"],
        "val_list": plain["dataset"]["val_list"],
        "arch": plain["segmenter"]["arch"],
        "backbone": plain["backbone"]["name"],
    }
    finish_run(out_dir, metrics, loggers, summary={"miou": {"segmenter": metrics["miou"]}})
    names = list(metrics["per_class_iou"])
    print(f"\n{per_class_table({'second stage': list(metrics['per_class_iou'].values())}, names)}")
    print(f"second-stage validation mIoU {100 * metrics['miou']:.2f}% (outputs in {out_dir})")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="segment")
def hydra_main(cfg: DictConfig) -> float:
    metrics = run_or_exit(segment, cfg)
    return metrics["miou"]


def main() -> None:
    """The command line: composition errors (bad option, unknown key) as one line before Hydra starts."""
    run_preflight("segment")
    hydra_main()


if __name__ == "__main__":
    main()
