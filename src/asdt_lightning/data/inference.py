"""Images at their original size for inference (pseudo-mask export, evaluation), from any dataset reader.

Unlike the training/validation pipelines, nothing is cropped or resized here: predictions are made at the
image's own resolution and written or scored at that size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from .dataset import SegmentationReader
from .registry import build_reader
from .transforms import IMAGENET_MEAN, IMAGENET_STD


def reader_for(data: Mapping[str, Any]) -> SegmentationReader:
    """The reader of a ``dataset`` config (the synthetic set is generated first if needed), checked against
    ``dataset.has_background``."""
    reader = build_reader(data)
    if bool(data["has_background"]) != reader.has_background:
        raise DatasetError(
            f"dataset.has_background={data['has_background']} but {data['name']} "
            f"{'has' if reader.has_background else 'has no'} background class; leave it as conf/dataset sets it"
        )
    return reader


class InferenceImages(Dataset):
    """One list of a reader at original size, with image labels and ground-truth masks.

    ``__getitem__`` returns a dict: ``image`` (3, H, W) float32 normalised, ``rgb`` (3, H, W) uint8, ``size``
    (H, W), ``labels`` (C,) float32 multi-hot image labels, ``mask`` (H, W) int64 ground truth in the label space
    (all 255 where the image has none), ``name`` and ``index``.
    """

    def __init__(
        self,
        reader: SegmentationReader,
        split: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        require_masks: bool = False,
    ) -> None:
        reader.check([split], masks_required=[split] if require_masks else [])
        entries = reader.entries(split, targets=True)
        self.reader = reader
        self.split = split
        self.names = list(entries.names)
        self.image_labels = entries.labels or [[] for _ in self.names]
        if require_masks:
            reader.require_masks(split, self.names)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255

    @property
    def class_names(self) -> list[str]:
        return list(self.reader.class_names)

    @property
    def has_background(self) -> bool:
        return self.reader.has_background

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.reader.read_sample(self.names[index], targets=True)
        assert mask is not None
        rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        labels = torch.zeros(self.reader.num_classes, dtype=torch.float32)
        labels[self.image_labels[index]] = 1.0
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
