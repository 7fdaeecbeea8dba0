"""Images at their original size for inference (pseudo-mask export, evaluation), from any dataset reader.

Unlike the training/validation pipelines, nothing is cropped or resized here: predictions are made at the
image's own resolution and written or scored at that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from .dataset import ReaderView, SegmentationReader
from .registry import reader_for as reader_for  # re-exported: the entry points read images through it
from .transforms import IMAGENET_MEAN, IMAGENET_STD


class InferenceImages(ReaderView, Dataset):
    """One list of a reader at original size, with image labels and ground-truth masks.

    ``__getitem__`` returns a dict: ``image`` (3, H, W) float32 normalised, ``rgb`` (3, H, W) uint8, ``size``
    (H, W), ``labels`` (C,) float32 multi-hot image labels, ``mask`` (H, W) int64 ground truth in the label space
    (all 255 where the image has none), ``name`` and ``index``. A list the reader holds as images only (VOC
    ``test``: no annotations, no masks) has no image labels (``labels_known`` False; ``labels`` all 0): a model
    must predict them (see ``pseudo_labels``).
    """

    def __init__(
        self,
        reader: SegmentationReader,
        split: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        require_masks: bool = False,
    ) -> None:
        self.labels_known = Path(split).stem not in reader.image_only_lists
        if require_masks and not self.labels_known:
            raise DatasetError(f"'{split}' holds images only (no masks) in {reader.name}; evaluate a list with masks")
        reader.check([split], masks_required=[split] if require_masks else [], targets=self.labels_known)
        entries = reader.entries(split, targets=self.labels_known)
        self.reader = reader
        self.split = split
        self.names = list(entries.names)
        self.image_labels = entries.labels or [[] for _ in self.names]
        if require_masks:
            reader.require_masks(split, self.names)
        self.normalise_as(mean, std)

    def normalise_as(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise images with this ``mean`` / ``std`` (0..1 units, per RGB channel) from now on."""
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.names)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the file headers (no decoding)."""
        sizes = []
        for name in self.names:
            path = self.reader.image_path(name)
            try:
                with Image.open(path) as im:
                    sizes.append((im.height, im.width))
            except OSError as err:
                raise DatasetError(f"cannot read image {path}: {err}; fix or remove that file") from None
        return sizes

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.reader.read_sample(self.names[index], targets=self.labels_known)
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
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


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of indices whose images share one size, in list order within each size.

    A prediction then never depends on the other images of its batch (no padding reaches the network or the
    CAM normalisation), and the batches depend only on the list, so a resumed export repeats them exactly.
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(i)
    batches = [g[j : j + batch_size] for g in by_size.values() for j in range(0, len(g), batch_size)]
    return sorted(batches, key=lambda b: b[0])


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
