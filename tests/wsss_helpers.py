"""Helpers of the pseudo-mask, evaluation, second-stage and pipeline tests: a tiny synthetic root and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from asdt_lightning.data.inference import reader_for
from asdt_lightning.data.synthetic import SYNTHETIC_CLASSES
from asdt_lightning.lit.module import ASDTModule
from conftest import small_module_kwargs
from tiny_runs import tiny_batches, tiny_synthetic

TINY_DATA = tiny_synthetic(num_train=10, num_val=6, image_size=48)  # the synthetic root of these tests
TINY_DATA_BATCHES = [*TINY_DATA, *tiny_batches(48)]  # ... read in 48-px crops, batches of 2, no workers


def compose_plain(config_name: str, *overrides: str) -> dict:
    """A composed config as a plain dict (hydra interpolations resolved where set)."""
    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=[*TINY_DATA, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def tiny_reader(*overrides: str):
    """The reader of the tiny synthetic dataset (generated on first use) and its dataset config."""
    data = compose_plain("pseudo_labels", "ckpt=unused", *overrides)["dataset"]
    return reader_for(data), data


def save_asdt_checkpoint(path: Path, class_names=SYNTHETIC_CLASSES, seed: int = 0, **overrides) -> Path:
    """A randomly initialised small ASDT network saved as a Lightning-style checkpoint."""
    torch.manual_seed(seed)
    module = ASDTModule(**small_module_kwargs(class_names=list(class_names), **overrides))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def numpy_miou(preds, gts, k, ignore=255):
    """An independent VOC mIoU: bincount over valid pixels of all images, IoU over classes seen anywhere."""
    hist = np.zeros((k, k), dtype=np.int64)
    for p, g in zip(preds, gts, strict=True):
        valid = g != ignore
        hist += np.bincount(k * g[valid].astype(int) + p[valid], minlength=k * k).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    return np.nanmean(iou)
