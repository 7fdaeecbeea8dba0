"""Tiny dataset roots in the real on-disk formats, built on the fly (VOCdevkit, COCO-Stuff 10K v1.1 .mat)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from asdt_lightning.data.coco_stuff import COCO_STUFF_182
from asdt_lightning.data.voc import VOC_CLASSES, write_mask_png

REPO = Path(__file__).resolve().parents[1]


def real_voc_masks() -> Path:
    """The 1,449 real VOC 2012 val masks: ``$ASDT_VOC_VAL_MASKS``, else ``../shared/data/voc2012_val_masks``
    beside the repository (may not exist: tests using it skip)."""
    env = os.environ.get("ASDT_VOC_VAL_MASKS")
    return Path(env) if env else REPO.parent / "shared" / "data" / "voc2012_val_masks"


def blocks_mask(h: int, w: int, ids: Sequence[int], band: int | None = None) -> np.ndarray:
    """(h, w) uint8: vertical stripes of ``ids`` (equal widths), optionally a ``band`` value on stripe edges."""
    mask = np.zeros((h, w), np.uint8)
    edges = np.linspace(0, w, len(ids) + 1).astype(int)
    for i, value in enumerate(ids):
        mask[:, edges[i] : edges[i + 1]] = value
        if band is not None and i:
            mask[:, max(edges[i] - 1, 0) : edges[i] + 1] = band
    return mask


def image_from_mask(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: a colour per mask value plus mild noise (a JPEG-like photo whose regions follow the mask)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, (256, 3))
    noise = rng.normal(0, 6, (*mask.shape, 3))
    return np.clip(palette[mask] + noise, 0, 255).astype(np.uint8)


def make_voc(
    tmp: Path,
    objects: dict[str, Sequence[str]],
    size: tuple[int, int] = (24, 32),
    lists: dict[str, Sequence[str]] | None = None,
    aug: Sequence[str] = (),
) -> Path:
    """``tmp/VOCdevkit/VOC2012``: a JPEG, an XML (every other object difficult) and a mask per entry (stripes of
    its classes, 255 band), ``SegmentationClassAug/`` for ``aug`` names; lists (default ``val``: all)."""
    root = tmp / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    index = {c: i + 1 for i, c in enumerate(VOC_CLASSES)}
    for k, (name, objs) in enumerate(objects.items()):
        ids = [0, *sorted({index[o] for o in objs if o in index})]
        mask = blocks_mask(*size, ids, band=255)
        Image.fromarray(image_from_mask(mask, k)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        xml = "".join(f"<object><name>{o}</name><difficult>{i % 2}</difficult></object>" for i, o in enumerate(objs))
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>{xml}</annotation>"
        )
        write_mask_png(root / ("SegmentationClassAug" if name in aug else "SegmentationClass") / f"{name}.png", mask)
    for split, names in (lists or {"val": list(objects)}).items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_coco_mat(path: Path, labels: np.ndarray, names: Sequence[str] = COCO_STUFF_182) -> None:
    """A COCO-Stuff 10K v1.1-style annotation: ``S`` (H, W) uint16 raw ids, ``names`` (1 x 182 cell array),
    ``captions``, ``regionMapStuff`` and ``regionLabelsStuff``, as MATLAB v5 (what the release ships)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = np.empty((1, len(names)), dtype=object)
    cells[0, :] = list(names)
    captions = np.empty((1, 2), dtype=object)
    captions[0, :] = ["a photo", "another caption"]
    regions = (np.arange(labels.size).reshape(labels.shape) // 7 + 1).astype(np.uint16)
    scipy.io.savemat(
        path,
        {
            "S": labels.astype(np.uint16),
            "names": cells,
            "captions": captions,
            "regionMapStuff": regions,
            "regionLabelsStuff": np.zeros((int(regions.max()), 1), np.uint8),
        },
        do_compression=True,
    )


def coco_ids(k: int) -> list[int]:
    """Raw COCO-Stuff ids of the k-th generated image: a thing and two stuff classes (ids used by both mappings)."""
    things = [1, 3, 17, 18, 44, 62]  # person, car, cat, dog, bottle, chair
    stuff = [124, 149, 157, 169, 173, 155]  # grass, road, sky-other, tree, wall-other, sea
    return [things[k % 6], stuff[k % 6], stuff[(k + 2) % 6]]


def make_coco(
    tmp: Path,
    n: int = 6,
    size: tuple[int, int] = (24, 32),
    fmt: str = "mat",
    lists: dict[str, Sequence[str]] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    jpeg: dict | None = None,
) -> Path:
    """``tmp/cocostuff-10k``: ``images/``, ``annotations/`` (``fmt`` mat or png, raw ids, stripes with an
    unlabeled (0) band), ``imageLists/`` (default train: first two thirds, test: the rest, all: everything)."""
    root = tmp / "cocostuff-10k"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    names = [f"COCO_train2014_{k:012d}" for k in range(n)]
    for k, name in enumerate(names):
        h, w = sizes[k] if sizes else size
        labels = blocks_mask(h, w, coco_ids(k), band=0)
        Image.fromarray(image_from_mask(labels, k)).save(root / "images" / f"{name}.jpg", **(jpeg or {"quality": 95}))
        if fmt == "mat":
            write_coco_mat(root / "annotations" / f"{name}.mat", labels)
        else:
            Image.fromarray(labels).save(root / "annotations" / f"{name}.png")
    cut = max(1, 2 * n // 3)
    for split, entries in (lists or {"train": names[:cut], "test": names[cut:], "all": names}).items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return root
