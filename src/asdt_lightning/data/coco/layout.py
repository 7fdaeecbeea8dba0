"""Where a COCO root keeps its files: images, the JSON annotations, panoptic PNGs and converted PNG masks, and
which of the three annotation sources a split reads (``dataset.source``)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import DatasetError
from .ids import COCO_URL, SPLITS

IMAGE_DIRS = ("{split}{year}", "images/{split}{year}", "JPEGImages/{split}{year}")  # searched in this order
MASK_DIR = "SegmentationClass/{split}{year}"
ANNOTATION_DIR = "annotations"
_NAME_SPLIT = re.compile(r"^COCO_(train|val)(\d{4})_\d+$")  # the 2014 file names carry their split
_LIST_SPLIT = re.compile(r"^(train|val)(\d{4})?$")


def layout_help(year: int) -> str:
    """The expected layout, in one line (for the errors)."""
    json = f"annotations/instances_{{train,val}}{year}.json"
    panoptic = "annotations/panoptic_{train,val}2017.json + annotations/panoptic_{train,val}2017/*.png, "
    return (
        f"expected {{train,val}}{year}/*.jpg (or images/ or JPEGImages/{{train,val}}{year}/) and one of: {json}, "
        f"{panoptic if year == 2017 else ''}SegmentationClass/{{train,val}}{year}/*.png (0..80, 255); get COCO "
        f"from {COCO_URL}"
    )


def require_pycocotools() -> None:
    """Refuse the instances source when pycocotools (which rasterises the polygons and RLEs) is absent."""
    if importlib.util.find_spec("pycocotools") is None:
        raise DatasetError(
            "pycocotools is not installed, and rasterising COCO's instances JSON needs it: pip install pycocotools "
            "(or use dataset.source=panoptic or png)"
        )


def resolve_coco_root(root: str | Path, year: int) -> Path:
    """The folder given as ``dataset.root``, which must exist."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"no COCO dataset at {path} (no such folder); {layout_help(year)}; set dataset.root")
    return path


def name_split(name: str) -> str | None:
    """The split a COCO 2014 file name carries (``COCO_val2014_000000000042`` -> ``val``), else None."""
    match = _NAME_SPLIT.match(name)
    return match.group(1) if match else None


def default_split(split: str, year: int) -> str | None:
    """A list name meaning a whole COCO split (``train``, ``val2014``...) -> ``train`` / ``val``; None for a list
    file. A year other than ``dataset.year`` raises."""
    match = _LIST_SPLIT.match(split)
    if match is None:
        return None
    if match.group(2) and int(match.group(2)) != year:
        raise DatasetError(f"list '{split}' is of COCO {match.group(2)} but dataset.year={year}; set dataset.year")
    return match.group(1)


def list_file_split(path: Path) -> str | None:
    """The COCO split a list file is of, from its name (``train*.txt`` -> train, ``val*.txt`` -> val), else None."""
    stem = path.stem.lower()
    return next((s for s in SPLITS if stem.startswith(s)), None)


@dataclass
class CocoLayout:
    """The folders of one root; ``image_dir``, ``annotation_dir`` and ``mask_dir`` override the defaults (paths
    relative to ``root`` or absolute, with ``{split}`` and ``{year}`` filled in)."""

    root: Path
    year: int
    image_dir: str | None = None
    annotation_dir: str | None = None
    mask_dir: str | None = None
    _images: dict[str, Path] = field(default_factory=dict, repr=False)

    def _path(self, template: str, split: str) -> Path:
        path = Path(template.format(split=split, year=self.year)).expanduser()
        return path if path.is_absolute() else self.root / path

    def images(self, split: str) -> Path:
        """The image folder of a split: the first existing default (``train2014/``, ``images/train2014/``,
        ``JPEGImages/train2014/``), or ``image_dir``."""
        if split not in self._images:
            candidates = [self._path(t, split) for t in ([self.image_dir] if self.image_dir else IMAGE_DIRS)]
            self._images[split] = next((p for p in candidates if p.is_dir()), candidates[0])
        return self._images[split]

    def annotations(self) -> Path:
        return self._path(self.annotation_dir or ANNOTATION_DIR, "")

    def instances_json(self, split: str) -> Path:
        return self.annotations() / f"instances_{split}{self.year}.json"

    def panoptic_json(self, split: str) -> Path:
        return self.annotations() / f"panoptic_{split}{self.year}.json"

    def panoptic_pngs(self, split: str) -> Path:
        return self.annotations() / f"panoptic_{split}{self.year}"

    def masks(self, split: str) -> Path:
        return self._path(self.mask_dir or MASK_DIR, split)

    def json_path(self, source: str, split: str) -> Path:
        """The JSON of a JSON source."""
        return self.instances_json(split) if source == "instances" else self.panoptic_json(split)

    def source_path(self, source: str, split: str) -> Path:
        """The file or folder a split's labels come from (for messages)."""
        return self.masks(split) if source == "png" else self.json_path(source, split)

    def check_images(self, split: str) -> None:
        folder = self.images(split)
        if not folder.is_dir():
            raise DatasetError(f"{folder} is missing: the {split}{self.year} images; {layout_help(self.year)}")

    def present(self, source: str, split: str) -> bool:
        if source == "png":
            return self.masks(split).is_dir()
        if source == "panoptic":
            return self.year == 2017 and self.panoptic_json(split).is_file()
        return self.instances_json(split).is_file()

    def resolve_source(self, source: str, split: str) -> str:
        """``dataset.source`` for a split: ``auto`` takes the first present of png, instances, panoptic; a missing
        file (or pycocotools for instances) raises, naming what to get."""
        folder = f"{split}{self.year}"
        if source == "auto":
            found = next((s for s in ("png", "instances", "panoptic") if self.present(s, split)), None)
            if found is None:
                raise DatasetError(
                    f"no {folder} annotations under {self.root} (neither {self.instances_json(split)} nor "
                    f"{self.masks(split)}/); {layout_help(self.year)}"
                )
            source = found
        elif not self.present(source, split):
            what = {
                "png": f"{self.masks(split)}/ (PNG masks, set dataset.mask_dir)",
                "instances": f"{self.instances_json(split)} (annotations_trainval{self.year}.zip)",
                "panoptic": f"{self.panoptic_json(split)} (panoptic_annotations_trainval2017.zip)",
            }[source]
            raise DatasetError(f"dataset.source={source} but {what} is missing; {layout_help(self.year)}")
        if source == "panoptic" and not self.panoptic_pngs(split).is_dir():
            raise DatasetError(
                f"{self.panoptic_pngs(split)}/ is missing: the panoptic PNGs (unzip annotations/panoptic_{folder}.zip "
                f"of panoptic_annotations_trainval2017.zip there; {COCO_URL})"
            )
        if source == "instances":
            require_pycocotools()
        return source
