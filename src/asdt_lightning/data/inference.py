"""Images at their original size for inference (pseudo-mask export, evaluation), and dataset roots by config.

Unlike the training/validation pipelines, nothing is cropped or resized here: predictions are made at the
image's own resolution and written or scored at that size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX
from .registry import dataset_class_names, default_synthetic_root
from .synthetic import SyntheticSpec, ensure_synthetic_voc
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .voc import VOCSegmentation, check_voc_root, mask_path


def dataset_root_and_classes(data: Mapping[str, Any]) -> tuple[Path, list[str]]:
    """The VOC-layout root (the synthetic set is generated first if needed) and class names of a dataset config."""
    root = data["root"]
    if data["name"] == "synthetic":
        spec = SyntheticSpec(**data["synthetic"])
        root = ensure_synthetic_voc(root or default_synthetic_root(spec), spec)
    return Path(root).expanduser(), list(data.get("class_names") or dataset_class_names(data["name"]))


class InferenceImages(Dataset):
    """One list of a VOC-layout root at original size.

    ``__getitem__`` returns a dict: ``image`` (3, H, W) float32 normalised, ``rgb`` (3, H, W) uint8, ``size``
    (H, W), ``labels`` (C,) float32 multi-hot image labels, ``mask`` (H, W) int64 ground truth (all 255 where
    the image has none), ``name`` and ``index``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        require_masks: bool = False,
    ) -> None:
        resolved = check_voc_root(root, [split], masks_required=[split] if require_masks else [])
        self.voc = VOCSegmentation(resolved, split, class_names)
        self.root = self.voc.root
        self.names = self.voc.names
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255

    def missing_masks(self) -> list[str]:
        """Names of the list whose ground-truth mask is missing."""
        return [n for n in self.names if mask_path(self.root, n) is None]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.voc.read_sample(index)
        rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        labels = torch.zeros(self.voc.num_classes, dtype=torch.float32)
        labels[self.voc.image_labels[index]] = 1.0
        return {
            "image": (rgb.float() - self.mean) / self.std,
            "rgb": rgb,
            "size": tuple(image.shape[:2]),
            "labels": labels,
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "name": self.names[index],
            "index": index,
        }


def pad_collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of different sizes, padding at the bottom/right to the largest (image 0 after
    normalisation, i.e. the mean colour; rgb 0; mask 255). ``size`` keeps each image's own (H, W)."""
    h = max(s["size"][0] for s in samples)
    w = max(s["size"][1] for s in samples)
    n = len(samples)
    images = torch.zeros(n, 3, h, w)
    rgb = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    masks = torch.full((n, h, w), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        sh, sw = s["size"]
        images[i, :, :sh, :sw] = s["image"]
        rgb[i, :, :sh, :sw] = s["rgb"]
        masks[i, :sh, :sw] = s["mask"]
    return {
        "image": images,
        "rgb": rgb,
        "mask": masks,
        "labels": torch.stack([s["labels"] for s in samples]),
        "size": [tuple(s["size"]) for s in samples],
        "name": [s["name"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
    }
