"""The embedded procedural WSSS dataset, written once in VOCdevkit layout and read by the VOC DataModule.

Each object has a *body* whose look is shared by every class (a shaded, brownish ellipse) and a class *cue*
on one end of it (stripes of a class colour at a class angle). Only the cue tells the class, so a classifier's
CAM finds the cue, not the object; the body's colour and edges, which the stripes share, let a CRF or a pairwise
loss recover the whole object. Background scenes are correlated with classes (a context confounder), images
hold one to three objects, and a 255 band marks every boundary, as in VOC.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import DatasetError
from ..io_utils import atomic_write, atomic_write_text
from .voc import IGNORE_INDEX, write_mask_png

SYNTHETIC_CLASSES: tuple[str, ...] = ("apple", "bell", "cone", "drum", "egg", "flag")
CUE_COLOURS = np.array(
    [[230, 30, 30], [30, 200, 30], [40, 60, 230], [230, 200, 20], [200, 30, 200], [20, 210, 210]], dtype=float
)
SCENE_COLOURS = np.array([[110, 160, 220], [70, 140, 60], [200, 180, 130], [120, 120, 120]], dtype=float)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the same spec and seed always give the same files."""

    num_train: int = 600
    num_val: int = 150
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    seed: int = 0
    context_correlation: float = 0.6  # probability that the scene is the first object's class's preferred one
    cue_extent: float = 0.35  # the cue is the part of the body beyond this fraction of the half major axis
    min_radius: float = 0.16  # half major axis, as a fraction of the image size
    max_radius: float = 0.32
    generator_version: int = 2  # bumped whenever the drawing changes, so caches of older drawings are not reused

    def names(self) -> tuple[list[str], list[str]]:
        total = self.num_train + self.num_val
        ids = [f"syn_{i:06d}" for i in range(total)]
        return ids[: self.num_train], ids[self.num_train :]


def render_sample(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One sample, deterministic in (spec.seed, index).

    Returns (H, W, 3) uint8 image, (H, W) uint8 mask (0 background, c + 1 class c, 255 boundary band),
    (H, W) bool cue pixels, and the sorted 0-based classes visible in the mask.
    """
    rng = np.random.default_rng([spec.seed, index])
    s = spec.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    num_classes = len(SYNTHETIC_CLASSES)
    classes = rng.integers(0, num_classes, rng.integers(spec.min_objects, spec.max_objects + 1))
    scene = classes[0] % len(SCENE_COLOURS) if rng.random() < spec.context_correlation else rng.integers(4)
    cells = 4
    low_freq = np.kron(rng.normal(0, 1, (cells, cells, 3)), np.ones((s // cells + 1, s // cells + 1, 1)))[:s, :s]
    image = SCENE_COLOURS[scene] + 15 * low_freq + rng.normal(0, 8, (s, s, 3))
    mask = np.zeros((s, s), np.uint8)
    cue_map = np.zeros((s, s), bool)
    body_colour = np.array([150.0, 110.0, 80.0]) + rng.normal(0, 15, 3)
    for c in classes:
        for _ in range(30):  # place with limited overlap
            cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
            a = rng.uniform(spec.min_radius * s, spec.max_radius * s)
            b = rng.uniform(0.08 * s, 0.8 * a)
            theta = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            body = (u / a) ** 2 + (v / b) ** 2 <= 1
            if (mask[body] > 0).mean() < 0.15:
                break
        end = rng.choice([-1.0, 1.0])
        cue = body & (u * end > spec.cue_extent * a)
        stripes = np.sin((u * np.cos(c) + v * np.sin(c)) * 0.5 + c) > 0
        shade = 1 - 0.25 * (v / b)
        image[body] = (body_colour * shade[..., None])[body] + rng.normal(0, 6, (int(body.sum()), 3))
        image[cue & stripes] = CUE_COLOURS[c]
        mask[body] = c + 1
        cue_map[body] = False
        cue_map |= cue
    labels = sorted(int(v) - 1 for v in np.unique(mask) if v > 0)
    band = ndimage.maximum_filter(mask, 3) != ndimage.minimum_filter(mask, 3)
    mask[band] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), mask, cue_map, labels


def _annotation_xml(name: str, spec: SyntheticSpec, mask: np.ndarray) -> str:
    objects = []
    for value in sorted(int(v) for v in np.unique(mask) if 0 < v < IGNORE_INDEX):
        ys, xs = np.nonzero(mask == value)
        objects.append(
            f"  <object><name>{SYNTHETIC_CLASSES[value - 1]}</name><difficult>0</difficult>"
            f"<bndbox><xmin>{xs.min() + 1}</xmin><ymin>{ys.min() + 1}</ymin><xmax>{xs.max() + 1}</xmax>"
            f"<ymax>{ys.max() + 1}</ymax></bndbox></object>"
        )
    size = spec.image_size
    return (
        f"<annotation>\n  <filename>{name}.jpg</filename>\n"
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>\n"
        + "\n".join(objects) + "\n</annotation>\n"
    )


def ensure_synthetic_voc(root: str | Path, spec: SyntheticSpec) -> Path:
    """Generate the dataset into ``root`` unless it is complete; resumes an interrupted generation.

    Every file is written atomically and files already present are kept, so an interrupted run picks up where
    it stopped. ``root/.complete`` (the spec as JSON) is written last.
    """
    root = Path(root).expanduser()
    marker = root / ".complete"
    wanted = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if marker.is_file():
        if marker.read_text().strip() == wanted:
            return root
        raise DatasetError(
            f"{root} holds a synthetic dataset of another spec ({marker.read_text().strip()}); choose another "
            "dataset.root or delete that folder"
        )
    train, val = spec.names()
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(train + val):
        paths = (root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png",
                 root / "Annotations" / f"{name}.xml")
        if all(p.is_file() for p in paths):
            continue
        image, mask, _, _ = render_sample(spec, index)
        atomic_write(paths[0], lambda f, im=image: Image.fromarray(im).save(f, format="JPEG", quality=90))
        write_mask_png(paths[1], mask)
        atomic_write_text(paths[2], _annotation_xml(name, spec, mask))
    lists = {"train": train, "val": val, "trainval": train + val}
    for split, names in lists.items():
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(names) + "\n")
    atomic_write_text(marker, wanted + "\n")
    return root
