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

# fmt: off
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on
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
    """A palette (or greyscale) PNG label map -> (H, W) uint8 class indices (255 = ignore). RGB is refused."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(
                    f"mask {path} is a {im.mode} image; masks must be palette (or greyscale) PNGs of class "
                    "indices, not colours: use the VOC SegmentationClass/ PNGs or convert colours to indices"
                )
            return np.array(im, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot read mask {path}: {err}; fix or remove that file") from None


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
    """A list name (``train``, ``val``, ``train_aug``...) in ImageSets/Segmentation, or a .txt path."""
    if split.endswith(".txt") or "/" in split or os.sep in split:
        return Path(split).expanduser()
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_split(root: Path, split: str) -> list[str]:
    """The image ids of a list (first column; ``JPEGImages/x.jpg SegmentationClassAug/x.png`` lines work)."""
    path = split_list_path(root, split)
    if not path.is_file():
        hint = (
            " (train_aug is the 10,582-image SBD-augmented list used by WSSS work, distributed with "
            "DeepLab/PSA; put it there or point dataset.train_list at it)"
            if Path(split).stem == "train_aug"
            else f" (set dataset.train_list / dataset.val_list to a list in {path.parent} or a .txt path)"
        )
        raise DatasetError(f"image list {path} not found{hint}")
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"image list {path} is empty; it needs one image id per line")
    return names


MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")  # searched in this order


def mask_path(root: Path, name: str) -> Path | None:
    """``SegmentationClassAug/<name>.png`` when present, else ``SegmentationClass/<name>.png``, else None."""
    for folder in MASK_DIRS:
        path = root / folder / f"{name}.png"
        if path.is_file():
            return path
    return None


def check_voc_root(root: str | Path, splits: Sequence[str], masks_required: Sequence[str] = ()) -> Path:
    """Cheap validation of a VOC root: folders and lists exist and are non-empty. Returns the resolved root.

    No image is opened; for the ``masks_required`` splits a mask folder must exist.
    """
    resolved = resolve_voc_root(root)
    if not (resolved / "Annotations").is_dir():
        raise DatasetError(
            f"{resolved / 'Annotations'} is missing: image labels come from its XML files; it is part of {VOC_URL}"
        )
    for split in splits:
        read_split(resolved, split)
    if masks_required and not any((resolved / d).is_dir() for d in MASK_DIRS):
        raise DatasetError(
            f"neither SegmentationClassAug/ nor SegmentationClass/ in {resolved}: list(s) "
            f"{', '.join(masks_required)} need ground-truth masks (SegmentationClass/ is in {VOC_URL})"
        )
    return resolved


def read_image_labels(xml_path: str | Path, class_to_index: Mapping[str, int]) -> list[int]:
    """Sorted unique 0-based class indices of every object in a VOC XML file (difficult objects included)."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"cannot read annotation {xml_path}: {err}; fix or re-extract that file") from None
    labels = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_index:
            raise DatasetError(
                f"unknown class '{name}' in {xml_path}; known: {', '.join(class_to_index)} "
                "(set dataset.class_names to match the annotations)"
            )
        labels.add(class_to_index[name])
    return sorted(labels)


def label_cache_path(root: Path, list_path: Path, class_names: Sequence[str]) -> Path:
    """``<cache>/labels/<hash>.json``, keyed by the resolved root, the list path and content, the classes."""
    digest = hashlib.sha256()
    parts = (
        str(root.resolve()),
        str(list_path.resolve()),
        list_path.read_bytes(),
        json.dumps(list(class_names)),
    )
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return cache_dir() / "labels" / f"{digest.hexdigest()[:20]}.json"


def load_image_labels(root: Path, split: str, names: Sequence[str], class_names: Sequence[str]) -> list[list[int]]:
    """Image labels of a list, parsed from the XML files once and then read from a JSON cache."""
    cache = label_cache_path(root, split_list_path(root, split), class_names)
    if cache.is_file():
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(cache.read_text())
            if isinstance(cached, list) and len(cached) == len(names):
                return cached
    class_to_index = {c: i for i, c in enumerate(class_names)}
    labels = []
    for name in names:
        xml = root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise DatasetError(f"annotation {xml} is missing (listed in {split}); image labels come from it")
        labels.append(read_image_labels(xml, class_to_index))
    with contextlib.suppress(OSError):  # a read-only cache only costs the parse next time
        atomic_write_text(cache, json.dumps(labels))
    return labels


class VOCSegmentation(Dataset):
    """Images, multi-hot image labels and (when present) masks of one list of a VOC-layout root.

    ``__getitem__`` returns a dict: ``image`` (3, h, w) float32 (normalised), ``mask`` (h, w) int64
    (255 = ignore; all 255 for an image without a mask), ``valid`` (h, w) bool (False on added padding),
    ``labels`` (C,) float32 multi-hot, ``name`` (str) and ``index`` (int). Masks come from
    ``SegmentationClassAug/`` when present, else ``SegmentationClass/``. Image labels are parsed from
    ``Annotations/*.xml`` once and cached as JSON (see :func:`load_image_labels`).
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
                f"e.g. {missing[0]}.jpg; re-extract the images ({VOC_URL}) or fix the list"
            )
        self.image_labels = load_image_labels(self.root, split, self.names, self.class_names)

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
        path = mask_path(self.root, name)
        if path is not None:
            mask = read_mask(path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                    f"{image.shape[1]}x{image.shape[0]}; fix or remove that mask"
                )
        else:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.read_sample(index)
        image_t, mask_t, valid = apply_transform(self.transform, image, mask)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[self.image_labels[index]] = 1.0
        return {
            "image": image_t,
            "mask": mask_t,
            "valid": valid,
            "labels": labels,
            "name": self.names[index],
            "index": index,
        }
