"""Reading COCO's JSON files: the instances and panoptic annotations -> per-image records, and the split index.

A *record* is what converting one image needs, as plain picklable values:

- instances: ``(height, width, [(annotation id, label 1..80, iscrowd, segmentation), ...])``;
- panoptic: ``(height, width, png file name, [(segment id, label, iscrowd), ...])``, stuff labelled 0.

The *split index* is what listing and labelling need, small enough to cache as JSON: per image name
``[height, width, thing annotations (crowd included), sorted class indices of its non-crowd things]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import DatasetError
from .ids import COCO_URL, thing_labels

Record = tuple[Any, ...]


def read_json(path: Path) -> dict[str, Any]:
    """A COCO JSON file; a damaged one raises, named."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path}: {err}; re-extract it from {COCO_URL}") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise DatasetError(f"{path} is not a COCO annotation file (no images, annotations and categories); {COCO_URL}")
    return data


def _images(data: Mapping[str, Any], path: Path) -> dict[int, tuple[str, int, int]]:
    try:
        return {
            int(im["id"]): (Path(im["file_name"]).stem, int(im["height"]), int(im["width"])) for im in data["images"]
        }
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: an image entry lacks id, file_name, height or width ({err})") from None


def _label(labels: Mapping[int, int], category: Any, path: Path, what: str) -> int:
    if int(category) not in labels:
        raise DatasetError(f"{path}: {what} has category_id {category}, which the file's categories do not list")
    return labels[int(category)]


def load_instances(path: Path) -> tuple[dict[str, Record], dict[int, int]]:
    """An ``instances_*.json`` -> records per image name, and ``{category id: label}``."""
    data = read_json(path)
    labels = thing_labels(data["categories"], path, panoptic=False)
    images = _images(data, path)
    anns: dict[int, list[tuple[int, int, int, Any]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        what = f"annotation {ann.get('id')}"
        if ann.get("image_id") not in anns:
            raise DatasetError(f"{path}: {what} is of image {ann.get('image_id')}, which the file does not list")
        label = _label(labels, ann.get("category_id"), path, what)
        anns[ann["image_id"]].append((int(ann["id"]), label, int(bool(ann.get("iscrowd", 0))), ann["segmentation"]))
    return {name: (h, w, anns[i]) for i, (name, h, w) in images.items()}, labels


def load_panoptic(path: Path) -> tuple[dict[str, Record], dict[int, int]]:
    """A ``panoptic_*.json`` -> records per image name, and ``{category id: label}`` (stuff 0)."""
    data = read_json(path)
    labels = thing_labels(data["categories"], path, panoptic=True)
    images = _images(data, path)
    records: dict[str, Record] = {}
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise DatasetError(f"{path}: the annotation of {ann.get('file_name')} is of an image it does not list")
        name, h, w = images[ann["image_id"]]
        segments = [
            (int(s["id"]), _label(labels, s["category_id"], path, f"segment {s['id']} of {name}"), int(s["iscrowd"]))
            for s in ann["segments_info"]
        ]
        records[name] = (h, w, ann["file_name"], segments)
    return records, labels


def split_index(records: Mapping[str, Record]) -> dict[str, list[Any]]:
    """Records (instances or panoptic) -> the split index (module doc)."""
    index: dict[str, list[Any]] = {}
    for name, record in records.items():
        h, w, parts = record[0], record[1], record[-1]  # parts: (id, label, iscrowd, ...) per instance or segment
        things = [p for p in parts if p[1] > 0]
        index[name] = [h, w, len(things), sorted({p[1] - 1 for p in things if not p[2]})]
    return index
