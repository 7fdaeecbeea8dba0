"""PASCAL VOC layout: class names, palette masks, image labels from XML, and the segmentation dataset."""

from __future__ import annotations

import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..io_utils import atomic_write, cache_dir
from .dataset import SegmentationDataset, SegmentationReader, list_file_path, read_list_file, unreadable
from .file_index import file_key, load_index, save_index

# fmt: off
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"
SBD_URL = (
    "SegmentationClassAug/ (SBD masks as VOC PNGs): https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip"
    ", or convert SBD (http://home.bharathh.info/pubs/codes/SBD/download.html) yourself"
)
TRAIN_AUG_URL = "https://github.com/jiwoon-ahn/psa/blob/master/voc12/train_aug.txt"
VOC_TEST_URL = "the PASCAL VOC evaluation server, http://host.robots.ox.ac.uk:8080/ (registration)"


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


MASK_MODES = ("P", "L")  # palette or greyscale: one class index per pixel


def mask_mode_problem(path: str | Path, mode: str) -> str | None:
    """The problem of a label map whose PIL mode holds colours, not class indices; None for P and L."""
    if mode in MASK_MODES:
        return None
    return (
        f"mask {path} is a {mode} image; masks must be palette (or greyscale) PNGs of class indices, not colours: "
        "use the VOC SegmentationClass/ PNGs or convert colours to indices"
    )


def read_mask(path: str | Path) -> np.ndarray:
    """A palette (or greyscale) PNG label map -> (H, W) uint8 class indices (255 = ignore). RGB is refused."""
    try:
        with Image.open(path) as im:
            if (problem := mask_mode_problem(path, im.mode)) is not None:
                raise DatasetError(problem)
            return np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError) as err:
        raise unreadable("mask", Path(path), err) from None


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
    return list_file_path(root / "ImageSets" / "Segmentation", split)


def list_hint(root: Path, split: str) -> str:
    """Where to get a missing VOC list."""
    if Path(split).stem == "train_aug":
        return (
            " (train_aug is the 10,582-image SBD-augmented list used by WSSS work: get it from "
            f"{TRAIN_AUG_URL}, put it there or point dataset.train_list at it)"
        )
    if Path(split).stem == "test":
        return f" (the test images and list are in VOC2012test.tar from {VOC_TEST_URL})"
    folder = split_list_path(root, split).parent
    return f" (set dataset.train_list / dataset.val_list to a list in {folder} or a .txt path)"


def read_split(root: Path, split: str) -> list[str]:
    """The image ids of a list (first column; ``JPEGImages/x.jpg SegmentationClassAug/x.png`` lines work)."""
    return read_list_file(split_list_path(root, split), list_hint(root, split))


MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")  # searched in this order


def mask_path(root: Path, name: str) -> Path | None:
    """``SegmentationClassAug/<name>.png`` when present, else ``SegmentationClass/<name>.png``, else None."""
    for folder in MASK_DIRS:
        path = root / folder / f"{name}.png"
        if path.is_file():
            return path
    return None


def check_voc_root(
    root: str | Path, splits: Sequence[str], masks_required: Sequence[str] = (), labels_required: bool = True
) -> Path:
    """Cheap validation of a VOC root: folders and lists exist and are non-empty. Returns the resolved root.

    No image is opened; for the ``masks_required`` splits a mask folder must exist, and ``Annotations/`` unless
    ``labels_required`` is False (reading images only, e.g. ``test`` for pseudo-mask export).
    """
    resolved = resolve_voc_root(root)
    if labels_required and not (resolved / "Annotations").is_dir():
        raise DatasetError(
            f"{resolved / 'Annotations'} is missing: image labels come from its XML files; it is part of {VOC_URL}"
        )
    for split in splits:
        read_split(resolved, split)
    if masks_required and not any((resolved / d).is_dir() for d in MASK_DIRS):
        raise DatasetError(
            f"neither SegmentationClassAug/ nor SegmentationClass/ in {resolved}: list(s) "
            f"{', '.join(masks_required)} need ground-truth masks (SegmentationClass/ is in {VOC_URL}; {SBD_URL})"
        )
    return resolved


def read_object_classes(xml_path: str | Path) -> list[str]:
    """The class name of every object in a VOC XML file, in file order (difficult objects included)."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"cannot read annotation {xml_path}: {err}; fix or re-extract that file") from None
    return [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]


def labels_from_classes(names: Sequence[str], class_to_index: Mapping[str, int], source: str | Path) -> list[int]:
    """Object class names -> sorted unique 0-based class indices; an unknown name raises, naming ``source``."""
    for name in names:
        if name not in class_to_index:
            raise DatasetError(
                f"unknown class '{name}' in {source}; known: {', '.join(class_to_index)} "
                "(set dataset.class_names to match the annotations)"
            )
    return sorted({class_to_index[n] for n in names})


def read_image_labels(xml_path: str | Path, class_to_index: Mapping[str, int]) -> list[int]:
    """Sorted unique 0-based class indices of every object in a VOC XML file (difficult objects included)."""
    return labels_from_classes(read_object_classes(xml_path), class_to_index, xml_path)


_LABEL_CACHE_VERSION = 1


def label_cache_path(root: Path) -> Path:
    """``<cache>/labels/voc-<hash>.json``: the object classes of every parsed XML file of one root."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "labels" / f"voc-{digest}.json"


def load_object_classes(root: Path, names: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Object class names of each entry's XML, parsed once per root and file version (a JSON cache).

    Returns the classes per name and a problem line per name whose XML is missing or unreadable.
    """
    cache = label_cache_path(root)
    entries = load_index(cache, _LABEL_CACHE_VERSION)
    found: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    changed = False
    for name in names:
        xml = root / "Annotations" / f"{name}.xml"
        key = file_key(xml)
        if key is None:
            problems[name] = f"annotation {xml} is missing; image labels come from it ({VOC_URL})"
            continue
        cached = entries.get(name)
        if cached is not None and cached[0] == key:
            found[name] = list(cached[1])
            continue
        try:
            found[name] = read_object_classes(xml)
        except DatasetError as err:
            problems[name] = str(err)
            continue
        entries[name] = [key, found[name]]
        changed = True
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs the parse next time
            save_index(cache, _LABEL_CACHE_VERSION, entries)
    return found, problems


def load_image_labels(
    root: Path, names: Sequence[str], class_names: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Image labels (sorted class indices) of entries from their XML files, and a problem line per bad entry."""
    classes, problems = load_object_classes(root, names)
    class_to_index = {c: i for i, c in enumerate(class_names)}
    labels: dict[str, list[int]] = {}
    for name, objects in classes.items():
        try:
            labels[name] = labels_from_classes(objects, class_to_index, root / "Annotations" / f"{name}.xml")
        except DatasetError as err:
            problems[name] = str(err)
    return labels, problems


class VOCReader(SegmentationReader):
    """The PASCAL VOC layout (also the synthetic dataset's): ``JPEGImages/``, ``Annotations/`` (image labels),
    ``SegmentationClassAug/`` or ``SegmentationClass/`` (palette PNGs: 0 background, ``c + 1`` class ``c``,
    255 void), ``ImageSets/Segmentation/<list>.txt``."""

    name = "voc"
    image_only_lists = ("test",)
    download_hint = f"re-extract the images ({VOC_URL}) or fix the list"

    def __init__(self, root: str | Path, class_names: Sequence[str] = VOC_CLASSES) -> None:
        super().__init__(root, class_names, has_background=True)

    def resolve_root(self) -> Path:
        return resolve_voc_root(self.given_root)

    def list_path(self, split: str) -> Path:
        return split_list_path(self.root, split)

    def list_hint(self, split: str) -> str:
        return list_hint(self.root, split)

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        check_voc_root(self.root, splits, masks_required, labels_required=targets)

    def annotation_problem(self, name: str) -> str | None:
        return None  # missing XML files are found (and named) by load_labels, which stats them anyway

    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        return load_image_labels(self.root, names, self.class_names)

    def mask_file(self, name: str) -> Path | None:
        return mask_path(self.root, name)

    def decode_mask(self, path: Path) -> np.ndarray:
        return read_mask(path)

    def mask_header_problem(self, path: Path, mode: str) -> str | None:
        return mask_mode_problem(path, mode)


class VOCSegmentation(SegmentationDataset):
    """:class:`SegmentationDataset` of one list of a VOC-layout root (see there for the sample contract).

    Masks come from ``SegmentationClassAug/`` when present, else ``SegmentationClass/`` (all 255 without one);
    image labels are parsed from ``Annotations/*.xml`` once per root and cached (:func:`load_object_classes`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] = VOC_CLASSES,
        transform: Callable[..., Any] | None = None,
        targets: bool = True,
        on_bad_sample: str = "error",
    ) -> None:
        super().__init__(VOCReader(root, class_names), split, transform, targets, on_bad_sample)
