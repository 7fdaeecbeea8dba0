"""COCO annotations -> label maps (pure array functions): instances (polygons, RLE) with pycocotools, panoptic
RGB-encoded segment ids, and the check of already-converted PNG masks.

Label maps are (H, W) uint8: 0 background, ``c + 1`` thing class ``c`` (0..79), 255 ignore.

Overlapping instances: the rule is *smaller on top*. Crowd regions are painted first (255), then the non-crowd
instances from the largest to the smallest (by rasterised area; ties by annotation id), each over what is there:
a small object in front of a large one stays visible, as in COCO's panoptic release, and an instance annotated
inside a crowd region keeps its label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import IGNORE_INDEX
from ...errors import DatasetError
from .ids import NUM_THINGS, category_lookup


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """One ``segmentation`` field (polygons, uncompressed or compressed RLE) -> a compressed RLE; None when it
    has no area (no polygon of 3 or more points). Raises ValueError on a malformed field."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6]  # pycocotools takes 4 for a box
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(f"RLE of size {segmentation.get('size')} in an image of {height}x{width}")
        if isinstance(segmentation["counts"], list):  # uncompressed (iscrowd) RLE
            return mask_utils.frPyObjects(segmentation, height, width)
        return {"size": [height, width], "counts": segmentation["counts"]}
    raise ValueError(f"segmentation is neither polygons nor an RLE: {type(segmentation).__name__}")


def instances_mask(annotations: Sequence[Sequence[Any]], height: int, width: int) -> np.ndarray:
    """Rasterise one image's instances -> (H, W) uint8 label map (module doc: crowd 255, smaller on top).

    ``annotations``: ``(annotation id, mask label 1..80, iscrowd, segmentation)`` per instance.
    """
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), np.uint8)
    things = []
    for ann_id, label, crowd, segmentation in annotations:
        try:
            rle = segmentation_rle(segmentation, height, width)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"annotation {ann_id}: {err}") from None
        if rle is None:
            continue
        if crowd:
            out[mask_utils.decode(rle).astype(bool)] = IGNORE_INDEX
        else:
            things.append((-float(mask_utils.area(rle)), int(ann_id), int(label), rle))
    for _, _, label, rle in sorted(things, key=lambda t: t[:2]):
        out[mask_utils.decode(rle).astype(bool)] = label
    return out


def panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int64 segment ids, ``id = R + 256 G + 256^2 B`` (0: unlabelled)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_mask(rgb: np.ndarray, segments: Sequence[Sequence[int]]) -> np.ndarray:
    """One panoptic PNG and its segments -> (H, W) uint8 label map: each segment's pixels get its label (things
    1..80, stuff 0, crowd 255); unlabelled pixels (id 0) and ids without a segment stay 255.

    ``segments``: ``(segment id, mask label, iscrowd)`` per segment.
    """
    ids = panoptic_ids(rgb)
    out = np.full(ids.shape, IGNORE_INDEX, np.uint8)
    for segment_id, label, crowd in segments:
        out[ids == int(segment_id)] = IGNORE_INDEX if crowd else label
    return out


def png_labels(raw: np.ndarray, path: Path, png_ids: str = "contiguous") -> np.ndarray:
    """A user's PNG mask -> (H, W) uint8 labels: ``contiguous`` values 0..80 and 255 pass as they are; ``category``
    maps 0 and COCO category ids 1..90 to 0..80 (255 stays). Any other value raises, naming the file."""
    if png_ids == "category":
        lookup = category_lookup()
        mapped = lookup[raw]
        bad = (mapped == IGNORE_INDEX) & (raw != IGNORE_INDEX)
    else:
        mapped = raw
        bad = (raw > NUM_THINGS) & (raw != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad]))[:5]
        hint = (
            "0 background, 1..80 the thing classes in category-id order, 255 ignore; with COCO category ids (1..90) "
            "set dataset.png_ids=category"
            if png_ids == "contiguous"
            else "0 background, the 80 COCO category ids (1..90), 255 ignore"
        )
        raise DatasetError(f"mask {path} holds value(s) {values}; COCO masks hold {hint}")
    return mapped.astype(np.uint8)


def label_counts(mask: np.ndarray) -> dict[str, int]:
    """Pixels per thing label present (1..80; background and ignore excluded), as a JSON-ready ``{"label": n}``."""
    counts = np.bincount(mask.reshape(-1), minlength=256)
    return {str(i): int(counts[i]) for i in np.flatnonzero(counts[1 : NUM_THINGS + 1]) + 1}
