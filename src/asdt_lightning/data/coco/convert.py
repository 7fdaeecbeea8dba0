"""Converting one image's annotation into a cached PNG label map (or indexing a user's PNG): the tasks that the
cache runs, in this process or a pool. Each returns the pixels per thing label, or the problem line of a bad file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DatasetError
from ..dataset import unreadable
from ..voc import read_mask, write_mask_png
from .annotations import Record
from .rasterize import instances_mask, label_counts, panoptic_mask, png_labels

Task = tuple[Any, ...]  # (kind, *arguments): see run_task


def convert_instances(record: Record, dst: Path, json_path: Path) -> dict[str, int] | str:
    """Rasterise an instances record (``(H, W, annotations)``) into ``dst`` (atomically)."""
    height, width, annotations = record
    try:
        mask = instances_mask(annotations, height, width)
    except ValueError as err:
        return f"cannot rasterise {dst.stem} of {json_path}: {err}; fix that annotation or drop the image"
    write_mask_png(dst, mask)
    return label_counts(mask)


def read_panoptic_png(path: Path) -> np.ndarray:
    """A panoptic PNG -> (H, W, 3) uint8 RGB; a missing or damaged file raises, named."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DatasetError(f"panoptic PNG {path} is a {im.mode} image, not the RGB-encoded segment ids")
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable("panoptic PNG", path, err) from None


def convert_panoptic(record: Record, png_dir: Path, dst: Path) -> dict[str, int] | str:
    """Decode a panoptic record's PNG (``(H, W, file name, segments)``) into ``dst`` (atomically)."""
    height, width, file_name, segments = record
    src = png_dir / file_name
    try:
        rgb = read_panoptic_png(src)
    except DatasetError as err:
        return str(err)
    if rgb.shape[:2] != (height, width):
        return f"panoptic PNG {src} is {rgb.shape[1]}x{rgb.shape[0]} but its JSON entry {width}x{height}"
    mask = panoptic_mask(rgb, segments)
    write_mask_png(dst, mask)
    return label_counts(mask)


def index_png(path: Path, png_ids: str) -> dict[str, int] | str:
    """The label counts of a user's PNG mask (read in place, not copied)."""
    try:
        return label_counts(png_labels(read_mask(path), path, png_ids))
    except DatasetError as err:
        return str(err)


def run_task(task: Task) -> dict[str, int] | str:
    """``("instances", record, dst, json)``, ``("panoptic", record, png_dir, dst)`` or ``("png", path, png_ids)``."""
    kind, *args = task
    return {"instances": convert_instances, "panoptic": convert_panoptic, "png": index_png}[kind](*args)
