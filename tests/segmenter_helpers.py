"""A tiny randomly initialised second-stage (segmenter) checkpoint, for the tests of the entry points that read one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

TINY_SEGMENTER = {"arch": "deeplabv2", "backbone": "resnet18", "output_stride": 8, "rates": [1, 2], "pretrained": False}


def save_segmenter_checkpoint(path: Path, class_names: Sequence[str], seed: int = 0) -> Path:
    """A ResNet-18 DeepLab-v2 ``SegmenterModule`` saved as a Lightning-style checkpoint (no download)."""
    from asdt_lightning.lit.segmenter import SegmenterModule

    torch.manual_seed(seed)
    module = SegmenterModule(TINY_SEGMENTER, list(class_names))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path
