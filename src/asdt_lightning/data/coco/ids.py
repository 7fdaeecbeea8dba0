"""COCO's 80 thing classes, their category ids and label indices, and the checks of the ``dataset=coco`` settings.

The names are COCO-Stuff's first 91 ids less the 11 unused ones (COCO-Stuff numbers its things by COCO's category
ids), so they live in one place: :data:`..coco_stuff.ids.COCO_STUFF_182`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import IGNORE_INDEX
from ...errors import DatasetError
from ..coco_stuff.ids import COCO_STUFF_182, USED_IDS

COCO_URL = "https://cocodataset.org/#download"
NUM_THINGS = 80
# COCO category ids of the 80 thing classes (1..90 with 10 gaps), in order; class c has label c + 1 in masks
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in USED_IDS if i <= 91)
COCO_CLASSES: tuple[str, ...] = tuple(COCO_STUFF_182[i - 1] for i in COCO_CATEGORY_IDS)
YEARS = (2014, 2017)
SPLITS = ("train", "val")
SOURCES = ("auto", "instances", "panoptic", "png")
PNG_IDS = ("contiguous", "category")  # PNG values: 0..80 (one-stage codebases), or 0 + COCO category ids 1..90
LABEL_SOURCES = ("mask", "annotations")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def category_lookup() -> np.ndarray:
    """(256,) uint8 table: COCO category id -> mask label (1..80); 0 -> 0 (background); any other id -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[0] = 0
    for index, cid in enumerate(COCO_CATEGORY_IDS):
        table[cid] = index + 1
    return table


def thing_labels(categories: Sequence[Mapping[str, Any]], path: Path, panoptic: bool) -> dict[int, int]:
    """The ``categories`` of a COCO JSON -> ``{category id: mask label}``: things 1..80, stuff (panoptic) 0.

    A thing category that is not one of COCO's 80 (by id and name) raises, naming the file: it is no COCO file
    (or one of another class list)."""
    names = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    labels: dict[int, int] = {}
    for cat in categories:
        cid, name = int(cat["id"]), str(cat.get("name", ""))
        if panoptic and not cat.get("isthing", 1):
            labels[cid] = 0
            continue
        if cid not in names or _normalise(name) != _normalise(names[cid]):
            expected = f"'{names[cid]}'" if cid in names else "no thing class"
            raise DatasetError(
                f"{path} lists thing category {cid} '{name}', but COCO's id {cid} is {expected}; this is not a COCO "
                f"{'panoptic' if panoptic else 'instances'} file of the 80 thing classes ({COCO_URL})"
            )
        labels[cid] = COCO_CATEGORY_IDS.index(cid) + 1
    return labels


def _choice(value: Any, choices: Sequence[Any], key: str) -> None:
    if value not in choices:
        raise DatasetError(f"dataset.{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_settings(
    year: Any, source: Any, png_ids: Any = "contiguous", label_source: Any = "mask", min_label_pixels: Any = 1
) -> None:
    """Validate the ``dataset=coco`` keys (one line each, before any file is opened)."""
    _choice(year, YEARS, "year")
    _choice(source, SOURCES, "source")
    _choice(png_ids, PNG_IDS, "png_ids")
    _choice(label_source, LABEL_SOURCES, "label_source")
    if source == "panoptic" and year != 2017:
        raise DatasetError(f"dataset.source=panoptic needs dataset.year=2017 (COCO panoptic is 2017 only), got {year}")
    if source == "png" and label_source == "annotations":
        raise DatasetError("dataset.label_source=annotations needs a JSON source; PNG masks give labels from the mask")
    if isinstance(min_label_pixels, bool) or not isinstance(min_label_pixels, int) or min_label_pixels < 1:
        raise DatasetError(f"dataset.min_label_pixels must be a whole number >= 1, got {min_label_pixels!r}")
