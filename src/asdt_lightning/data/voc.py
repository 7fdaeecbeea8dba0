"""PASCAL VOC layout: class names, palette masks, image labels from XML, and the segmentation dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from ..io_utils import atomic_write, atomic_write_text, cache_dir
from .transforms import apply_transform

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"


def voc_palette() -> list[int]:
    """The standard 256-entry VOC colour map as a flat list of 768 RGB values."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_mask(path: str | Path) -> np.ndarray:
    """A palette (or greyscale) PNG label map -> (H, W) uint8 class indices (255 = ignore)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise DatasetError(f"mask {path} is a {im.mode} image; expected a palette or greyscale PNG of indices")
        return np.array(im, dtype=np.uint8)


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write (H, W) uint8 class indices as a VOC-palette PNG, atomically."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


def resolve_voc_root(root: str | Path) -> Path:
    """Accept ``VOCdevkit``, ``VOCdevkit/VOC2012`` or any folder holding ``JPEGImages/``."""
    path = Path(root).expanduser()
    for candidate in (path, path / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"no VOC dataset at {path} (no JPEGImages/ there or in VOC2012/); download {VOC_URL}, extract it and "
        "set dataset.root to its VOCdevkit folder"
    )


def split_list_path(root: Path, split: str) -> Path:
    """A list name (``train``, ``val``, ``train_aug``...) in ImageSets/Segmentation, or a path to a .txt file."""
    if split.endswith(".txt") or os.sep in split:
        return Path(split).expanduser()
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_split(root: Path, split: str) -> list[str]:
    path = split_list_path(root, split)
    if not path.is_file():
        hint = (
            " (train_aug is the 10,582-image SBD-augmented list used by WSSS work; put it there or point "
            "dataset.train_list at it)" if split == "train_aug" else ""
        )
        raise DatasetError(f"image list {path} not found{hint}")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    names = [Path(n).stem for n in names]  # tolerate "JPEGImages/x.jpg SegmentationClassAug/x.png" lines
    if not names:
        raise DatasetError(f"image list {path} is empty")
    return names


def mask_dir(root: Path) -> Path | None:
    """SegmentationClassAug/ when present, else SegmentationClass/, else None."""
    for name in ("SegmentationClassAug", "SegmentationClass"):
        if (root / name).is_dir():
            return root / name
    return None


def check_voc_root(root: str | Path, splits: Sequence[str], masks_required: Sequence[str] = ()) -> Path:
    """Cheap validation of a VOC root: folders and lists exist and are non-empty. Returns the resolved root."""
    resolved = resolve_voc_root(root)
    if not (resolved / "Annotations").is_dir():
        raise DatasetError(f"{resolved / 'Annotations'} is missing: image labels come from its XML files ({VOC_URL})")
    for split in splits:
        read_split(resolved, split)
    if masks_required and mask_dir(resolved) is None:
        raise DatasetError(
            f"no SegmentationClass/ or SegmentationClassAug/ in {resolved}: the {list(masks_required)} split(s) "
            f"need ground-truth masks ({VOC_URL})"
        )
    return resolved


def read_image_labels(xml_path: str | Path, class_to_index: Mapping[str, int]) -> list[int]:
    """Sorted unique 0-based class indices of every object in a VOC XML file (difficult objects included)."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"cannot read annotation {xml_path}: {err}") from None
    labels = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_index:
            raise DatasetError(f"unknown class '{name}' in {xml_path}; known: {', '.join(class_to_index)}")
        labels.add(class_to_index[name])
    return sorted(labels)


def _label_cache_path(root: Path, split: str, names: Sequence[str], class_names: Sequence[str]) -> Path:
    key = json.dumps([str(root.resolve()), split, list(names), list(class_names)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir() / "labels" / f"{digest}.json"


def load_image_labels(root: Path, split: str, names: Sequence[str], class_names: Sequence[str]) -> list[list[int]]:
    """Image labels of a list, parsed from the XML files once and cached as JSON."""
    cache = _label_cache_path(root, split, names, class_names)
    if cache.is_file():
        return json.loads(cache.read_text())
    class_to_index = {c: i for i, c in enumerate(class_names)}
    labels = []
    for name in names:
        xml = root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise DatasetError(f"annotation {xml} is missing (listed in {split})")
        labels.append(read_image_labels(xml, class_to_index))
    with contextlib.suppress(OSError):  # a read-only cache only costs the parse next time
        atomic_write_text(cache, json.dumps(labels))
    return labels


class VOCSegmentation(Dataset):
    """Images, multi-hot image labels and (when present) masks of one list of a VOC-layout root.

    ``__getitem__`` returns a dict: ``image`` (3, H, W) float, ``mask`` (H, W) int64 (255 = ignore; all 255 when
    the split has no masks), ``valid`` (H, W) bool (False on padding), ``labels`` (C,) float multi-hot,
    ``name`` and ``index``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        transform: Callable[..., Any] | None = None,
    ) -> None:
        self.root = resolve_voc_root(root)
        self.split = split
        self.class_names = list(class_names)
        self.transform = transform
        self.names = read_split(self.root, split)
        missing = [n for n in self.names if not (self.root / "JPEGImages" / f"{n}.jpg").is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) of list '{split}' missing from {self.root / 'JPEGImages'}, "
                f"e.g. {missing[0]}.jpg"
            )
        self.image_labels = load_image_labels(self.root, split, self.names, self.class_names)
        self.mask_dir = mask_dir(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.names)

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask of one entry, untransformed."""
        name = self.names[index]
        path = self.root / "JPEGImages" / f"{name}.jpg"
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise DatasetError(f"cannot read image {path}: {err}") from None
        mask_path = self.mask_dir / f"{name}.png" if self.mask_dir is not None else None
        if mask_path is not None and mask_path.is_file():
            mask = read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"mask {mask_path} is {mask.shape[::-1]} but its image is {image.shape[1::-1]}")
        else:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.read_sample(index)
        image_t, mask_t, valid = apply_transform(self.transform, image, mask)
        labels = torch.zeros(self.num_classes)
        labels[self.image_labels[index]] = 1.0
        return {"image": image_t, "mask": mask_t, "valid": valid, "labels": labels, "name": self.names[index],
                "index": index}
