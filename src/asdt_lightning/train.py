"""Hydra entry point: train ASDT and report per-branch validation mIoU.

    python -m asdt_lightning.train                                 # synthetic default, CPU, minutes
    python -m asdt_lightning.train dataset=voc dataset.root=/data/VOCdevkit backbone=resnet101 trainer=gpu
    python -m asdt_lightning.train pwm.duty=0.5 pwm.period=150 trainer.max_steps=2000

Writes to the run's Hydra folder: ``metrics.json``, ``config_resolved.yaml``, ``checkpoints/`` and logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from .checks import check_crf_connectivities, check_dataset, check_resume_checkpoint, check_trainer
from .cli import run_preflight
from .config import plain_config
from .data.datamodule import SegmentationDataModule
from .data.registry import build_datamodule as build_dataset_module
from .data.registry import config_class_names
from .errors import ASDTUserError, run_or_exit, with_config_path
from .hardware import uses_cuda
from .io_utils import remove_empty_run_dir
from .lit.callbacks import FinalStepCheckpoint, PWMCallback
from .lit.module import ASDTModule
from .method.pwm import validate_pwm
from .metrics import BRANCH_TITLES, miou_table
from .models.backbones import check_backbone
from .runs import build_trainer, finish_run, fit_and_validate, start_run
from .tracking import announce, build_callbacks, check_tracking, quiet_start

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Cheap checks of the whole config, before any data or model is built (also run by ``preflight`` on every
    job of a multirun before the first starts)."""
    try:
        validate_pwm(**cfg.pwm)
    except ValueError as err:
        raise with_config_path(err, "pwm") from None
    check_backbone(cfg.backbone.name, cfg.backbone.weights)
    check_tracking(OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else {}, cfg.tracking)
    check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))  # type: ignore[arg-type]
    check_crf_connectivities(OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
    warn_untrained_cam_head(cfg)
    data: dict[str, Any] = OmegaConf.to_container(cfg.dataset, resolve=True)  # type: ignore[assignment]
    check_dataset(data)
    if cfg.get("ckpt_path"):
        plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "backbone")}
        net = network_settings(plain["model"], plain["backbone"])  # type: ignore[arg-type]
        check_resume_checkpoint(cfg.ckpt_path, net, config_class_names(data), data["has_background"], data["name"])


def warn_untrained_cam_head(cfg: DictConfig) -> None:
    """One warning when the CAM head would start at random with no classifier warm-up (``experiment=voc_released``
    and ``voc_paper`` expect ``res38_cls.pth``, whose ``fc8`` is a trained CAM head)."""
    if cfg.model.loss.classifier_warmup == 0 and not cfg.backbone.get("weights") and not cfg.backbone.get("pretrained"):
        log.warning(
            "model.loss.classifier_warmup=0 but the backbone and CAM head start at random: teacher A's first labels "
            "come from noise. Pass backbone.weights=/path/res38_cls.pth (its fc8 is the CAM head) or set "
            "model.loss.classifier_warmup=N"
        )


def network_settings(model: dict[str, Any], backbone: dict[str, Any]) -> dict[str, Any]:
    """``ASDTModule``'s ``net`` argument: the heads' settings and the backbone's (its name as ``backbone``)."""
    return {**model["net"], "backbone": backbone["name"], **{k: v for k, v in backbone.items() if k != "name"}}


def build_datamodule(data: dict[str, Any], seed: int) -> SegmentationDataModule:
    """The DataModule of ``dataset=synthetic|voc|coco_stuff`` (synthetic generated first if needed), after the
    same cheap root and list check as ``python -m asdt_lightning.prepare``."""
    return build_dataset_module(data, seed)


def build_module(cfg: dict[str, Any], class_names: list[str]) -> ASDTModule:
    model, backbone, data = cfg["model"], cfg["backbone"], cfg["dataset"]
    return ASDTModule(
        net=network_settings(model, backbone),
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
        label_resolution=model["label_resolution"],
        cam_relu_each_scale=model["cam_relu_each_scale"],
        fusion=model["fusion"],
    )


BRANCH_SUMMARY = (
    "(with image labels: each image's ground-truth classes, the pseudo-mask setting; without: all classes, the "
    "segmentation setting, the CAM on the classes its classifier predicts. CAM at its best background threshold "
    "{threshold}; outputs in {out_dir})"
)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Check, build, fit, validate; returns (and writes) the metrics."""
    check_config(cfg)
    quiet_start()
    out_dir = Path(cfg.output_dir)
    plain = plain_config(cfg)
    accelerator = str(plain["trainer"].get("accelerator", "auto"))
    plain["dataset"]["pin_memory"] = bool(plain["dataset"]["pin_memory"]) and uses_cuda(accelerator)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(plain["dataset"], cfg.seed)
    module = build_module(plain, list(datamodule.class_names))
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    crop = plain["dataset"]["crop_size"]
    module.example_input_array = torch.zeros(1, 3, crop, crop)  # the model summary's FLOPs per training image
    loggers = start_run(cfg, plain, out_dir)
    callbacks = [
        PWMCallback(**plain["pwm"]),
        FinalStepCheckpoint(
            dirpath=out_dir / "checkpoints",
            filename="best-step{step:06d}",
            auto_insert_metric_name=False,
            monitor="val/miou_fused",
            mode="max",
            save_top_k=1,
            save_last=True,
        ),
        *build_callbacks(plain["tracking"], plain["trainer"], out_dir, has_loggers=bool(loggers)),
    ]
    trainer = build_trainer(plain["trainer"], out_dir, callbacks, loggers, enable_model_summary=False)
    metrics = {
        **fit_and_validate(trainer, module, datamodule, cfg.ckpt_path),
        "precision": str(trainer.precision),
        "pwm": plain["pwm"],
        "dataset": plain["dataset"]["name"],
        "backbone": plain["backbone"]["name"],
    }
    finish_run(out_dir, metrics, loggers)
    without = {BRANCH_TITLES[k]: v for k, v in metrics["miou_without_image_labels"].items()}
    table = miou_table(
        {BRANCH_TITLES[k]: v for k, v in metrics["miou"].items()},
        "with image labels (%)",
        **{"without (%)": without},
    )
    announce(f"\n{table}\n" + BRANCH_SUMMARY.format(threshold=metrics["cam_threshold"], out_dir=out_dir))
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    metrics = run_or_exit(train_in_run_dir, cfg)
    return metrics["miou"]["fused"]


def train_in_run_dir(cfg: DictConfig) -> dict[str, Any]:
    """``train`` in Hydra's run folder, which is removed again when the run is refused before it wrote anything."""
    try:
        return train(cfg)
    except ASDTUserError:
        remove_empty_run_dir(cfg.output_dir)
        raise


def main() -> None:
    """``python -m asdt_lightning.train``: every job's config checked, then Hydra runs the job(s)."""
    run_preflight("train", check_config)
    hydra_main()


if __name__ == "__main__":
    main()
