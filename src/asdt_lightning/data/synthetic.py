"""The embedded procedural WSSS dataset, written once in VOCdevkit layout and read by the VOC DataModule.

Every object has a *body* whose look is shared by all classes (a shaded, mildly textured, brownish
ellipse, superellipse or rounded polygon) and a class *cue* on one end of it along its major axis (20-30% of
its area): a class colour in a class pattern (stripes, dots, checker, rings), alternating with the body's own
colour. Only the cue tells the class, so a classifier's CAM finds the cue, not the object; the body's colour
and edges, which the cue shares, let a CRF or a pairwise loss recover the whole object. Background scenes
(sky, grass, sand, concrete) are correlated with classes (a context confounder), images hold one to three
objects, occlusion is limited so that every object keeps most of its cue, and a 255 band marks every
boundary, as in VOC.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from ..io_utils import atomic_write_text
from .voc_writer import VOCSample, write_voc_root

SYNTHETIC_CLASSES: tuple[str, ...] = ("apple", "bell", "cone", "drum", "egg", "flag")
# The class cue: a saturated colour and a pattern drawn in the object's frame (u along the major axis).
CUE_COLOURS = np.array(
    [[215, 35, 35], [40, 185, 60], [45, 70, 225], [235, 200, 25], [195, 40, 195], [25, 200, 210]], dtype=float
)
# fmt: off
CUE_PATTERNS: tuple[str, ...] = (
    "cross_stripes", "dots", "long_stripes", "checker", "diagonal_stripes", "rings",
)
# fmt: on
SCENES: tuple[str, ...] = ("sky", "grass", "sand", "concrete")
SCENE_COLOURS = np.array([[110, 160, 220], [75, 140, 60], [215, 198, 158], [128, 128, 132]], dtype=float)
SCENE_GRAIN = (2.5, 8.0, 6.0, 5.0)  # standard deviation of each scene's fine texture
PREFERRED_SCENE: tuple[int, ...] = tuple(c % len(SCENES) for c in range(len(SYNTHETIC_CLASSES)))
SHAPES: tuple[str, ...] = ("ellipse", "superellipse", "rounded_polygon")
_MAX_TRIES = 40  # placements tried per object before it is dropped
_CANON = np.linspace(-1.02, 1.02, 97)  # canonical grid on which a shape's full area and cue cut are measured


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the same spec always gives the same files.

    Object sizes: the half major axis is ``min_radius``..``max_radius`` of the image size and the minor/major
    ratio ``min_aspect``..``max_aspect`` (an equivalent radius of about 0.11-0.30 of the image size).
    """

    num_train: int = 600
    num_val: int = 150
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    seed: int = 0
    min_radius: float = 0.16
    max_radius: float = 0.32
    min_aspect: float = 0.5
    max_aspect: float = 0.9
    min_cue_fraction: float = 0.2  # share of an object's area that its class cue covers
    max_cue_fraction: float = 0.3
    context_correlation: float = 0.6  # probability that the scene is the first object's class's preferred
    max_overlap: float = 0.2  # share of a new object's body that may lie over earlier objects
    min_cue_visible: float = 0.75  # share of every object's cue that stays visible (in frame, not occluded)
    generator_version: int = 3  # bumped whenever the drawing changes, so older caches are not reused

    def __post_init__(self) -> None:
        checks = {
            "num_train and num_val must be >= 1": self.num_train >= 1 and self.num_val >= 1,
            "image_size must be >= 32": self.image_size >= 32,
            "need 1 <= min_objects <= max_objects": 1 <= self.min_objects <= self.max_objects,
            "need 0 < min_radius <= max_radius <= 0.5": 0 < self.min_radius <= self.max_radius <= 0.5,
            "need 0 < min_aspect <= max_aspect <= 1": 0 < self.min_aspect <= self.max_aspect <= 1,
            "need 0 < min_cue_fraction <= max_cue_fraction < 1": 0 < self.min_cue_fraction <= self.max_cue_fraction < 1,
            "context_correlation must be in [0, 1]": 0 <= self.context_correlation <= 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise DatasetError(f"invalid synthetic dataset spec: {message} (dataset.synthetic.*)")

    def names(self) -> tuple[list[str], list[str]]:
        """Train ids then val ids: ``syn_000000`` ... in generation-index order."""
        ids = [f"syn_{i:06d}" for i in range(self.num_train + self.num_val)]
        return ids[: self.num_train], ids[self.num_train :]


@dataclass
class _Object:
    cls: int
    body: np.ndarray  # (S, S) bool, in frame
    cue: np.ndarray  # (S, S) bool, in frame
    full_area: float  # pixels of the whole (untruncated) body
    full_cue: float  # pixels of the whole cue
    u: np.ndarray  # (S, S) coordinates in the object's frame, pixels; u along the major axis towards the cue
    v: np.ndarray
    g: np.ndarray  # (S, S) normalised radius: 0 at the centre, 1 on the outline
    colour: np.ndarray  # (3,) body colour
    half_major: float
    centre: tuple[float, float]  # (y, x)


@dataclass
class _Sample:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8, 0 background, c + 1 class c, 255 boundary band
    cue: np.ndarray  # (S, S) bool, visible cue pixels
    labels: list[int]  # sorted 0-based classes present in the mask
    owner: np.ndarray  # (S, S) int, index into objects of the visible object, -1 background
    objects: list[_Object]


def _shape_field(kind: int, param: float, phase: float, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """Normalised radius of a shape at normalised coordinates (<= 1 inside); any array shape."""
    if kind == 0:
        return np.hypot(un, vn)
    if kind == 1:
        return (np.abs(un) ** param + np.abs(vn) ** param) ** (1.0 / param)
    n = int(param)  # rounded regular n-gon: a smooth maximum (log-sum-exp) over its half-planes
    angles = phase + 2 * np.pi * np.arange(n) / n
    proj = un[..., None] * np.cos(angles) + vn[..., None] * np.sin(angles)
    top = proj.max(-1)
    kappa = 8.0
    smooth = top + np.log(np.exp(kappa * (proj - top[..., None])).sum(-1)) / kappa
    return smooth / np.cos(np.pi / n)


def _body_colour(rng: np.random.Generator) -> np.ndarray:
    """One common mid-tone distribution (browns/ochres) that contrasts with every scene."""
    hue, saturation, value = rng.uniform(0.03, 0.10), rng.uniform(0.35, 0.6), rng.uniform(0.5, 0.7)
    return 255.0 * np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def _sample_object(
    rng: np.random.Generator, spec: SyntheticSpec, cls: int, yy: np.ndarray, xx: np.ndarray, centred: bool
) -> _Object:
    s = spec.image_size
    a = rng.uniform(spec.min_radius, spec.max_radius) * s
    b = a * rng.uniform(spec.min_aspect, spec.max_aspect)
    theta = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.15 * s, 0.85 * s, 2)
    if centred:
        cy = cx = s / 2
    kind = int(rng.integers(len(SHAPES)))
    param = [0.0, rng.uniform(2.5, 5.0), float(rng.integers(3, 7))][kind]
    phase = rng.uniform(0, 2 * np.pi)
    cue_fraction = rng.uniform(spec.min_cue_fraction, spec.max_cue_fraction)
    colour = _body_colour(rng)
    # whole-shape area and the cut along the major axis that leaves cue_fraction of it beyond, on a fixed grid
    cu, cv = np.meshgrid(_CANON, _CANON, indexing="xy")
    inside = _shape_field(kind, param, phase, cu, cv) <= 1
    cell = (_CANON[1] - _CANON[0]) ** 2 * a * b
    cut = float(np.quantile(cu[inside], 1.0 - cue_fraction))
    full_area = inside.sum() * cell
    full_cue = (inside & (cu > cut)).sum() * cell
    dx, dy = xx - cx, yy - cy  # u points towards the cue end (a random end: theta covers both)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    g = _shape_field(kind, param, phase, u / a, v / b)
    body = g <= 1
    return _Object(cls, body, body & (u / a > cut), full_area, full_cue, u, v, g, colour, a, (cy, cx))


def _fits(obj: _Object, placed: list[_Object], owner: np.ndarray, spec: SyntheticSpec) -> bool:
    """Mostly in frame, limited overlap, and every earlier object keeps most of its body and cue visible."""
    area = obj.body.sum()
    if area < 0.7 * obj.full_area or obj.cue.sum() < spec.min_cue_visible * obj.full_cue:
        return False
    if not placed:
        return True
    if (obj.body & (owner >= 0)).sum() > spec.max_overlap * area:
        return False
    new_owner = np.where(obj.body, len(placed), owner)
    for i, other in enumerate(placed):
        visible = new_owner == i
        if visible.sum() < 0.5 * other.full_area:
            return False
        if (other.cue & visible).sum() < spec.min_cue_visible * other.full_cue:
            return False
    return True


def _pattern(cls: int, u: np.ndarray, v: np.ndarray, period: float, half_major: float) -> np.ndarray:
    """The class pattern in the object's frame: True where the cue colour is drawn."""
    name = CUE_PATTERNS[cls]
    if name == "cross_stripes":
        return np.sin(2 * np.pi * u / period) > 0
    if name == "long_stripes":
        return np.sin(2 * np.pi * v / period) > 0
    if name == "diagonal_stripes":
        return np.sin(2 * np.pi * (u + v) / (period * np.sqrt(2))) > 0
    if name == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return du**2 + dv**2 <= (0.36 * period) ** 2
    if name == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    return np.sin(2 * np.pi * np.hypot(u - half_major, v) / period) > 0  # rings around the cue's tip


def _scene(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(S, S, 3) float background: a colour family, smooth low-frequency variation and a fine texture."""
    s = yy.shape[0]
    freq = rng.uniform(-1.5, 1.5, (2, 3, 1, 1))  # cycles per image: smooth
    phase = rng.uniform(0, 2 * np.pi, (3, 1, 1))
    amp = rng.uniform(4, 10, (3, 1, 1))
    waves = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) / s + phase)
    light = (amp * waves).sum(0)
    tint = rng.normal(0, 6, 3) + rng.normal(0, 4, 3) * waves[0][..., None]
    grain = rng.normal(0, SCENE_GRAIN[kind], (s, s, 3))
    if SCENES[kind] == "grass":  # vertical blades
        grain = ndimage.uniform_filter1d(grain, 5, axis=0) * np.sqrt(5)
    elif SCENES[kind] == "concrete":  # blotches
        grain = ndimage.uniform_filter(grain, (3, 3, 1)) * 3 + rng.normal(0, 2, (s, s, 3))
    image = SCENE_COLOURS[kind] + tint + light[..., None] + grain
    if SCENES[kind] == "sky":  # lighter towards the horizon
        image = image + 30 * (yy / s - 0.5)[..., None]
    return image


def _render(spec: SyntheticSpec, index: int) -> _Sample:
    rng = np.random.default_rng([spec.seed, index])
    s = spec.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    num_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    classes = [int(c) for c in rng.integers(0, len(SYNTHETIC_CLASSES), num_objects)]
    preferred = rng.random() < spec.context_correlation
    scene = PREFERRED_SCENE[classes[0]] if preferred else int(rng.integers(len(SCENES)))
    image = _scene(rng, scene, yy, xx)

    placed: list[_Object] = []
    owner = np.full((s, s), -1, dtype=np.int64)
    for cls in classes:
        for attempt in range(_MAX_TRIES):
            last_chance = not placed and attempt == _MAX_TRIES - 1  # never an empty image
            obj = _sample_object(rng, spec, cls, yy, xx, centred=last_chance)
            if last_chance or _fits(obj, placed, owner, spec):
                owner[obj.body] = len(placed)
                placed.append(obj)
                break

    light = rng.uniform(0, 2 * np.pi)
    period = max(4.0, 0.06 * s)
    for i, obj in enumerate(placed):
        draw = owner == i
        cy, cx = obj.centre
        along = ((xx - cx) * np.cos(light) + (yy - cy) * np.sin(light)) / obj.half_major
        shade = (1 + 0.15 * along - 0.12 * obj.g**2)[..., None]
        noise = rng.normal(0, 4, (s, s, 3))
        body = obj.colour * shade + noise
        cue = CUE_COLOURS[obj.cls] * shade + noise
        stripes = (obj.cue & _pattern(obj.cls, obj.u, obj.v, period, obj.half_major))[..., None]
        image = np.where(draw[..., None], np.where(stripes, cue, body), image)

    classes_of = np.array([o.cls + 1 for o in placed], dtype=np.uint8)
    mask = np.where(owner >= 0, classes_of[np.maximum(owner, 0)], 0).astype(np.uint8)
    band = ndimage.maximum_filter(mask, 3) != ndimage.minimum_filter(mask, 3)
    mask[band] = IGNORE_INDEX
    cue = np.zeros((s, s), dtype=bool)
    for i, obj in enumerate(placed):
        cue |= obj.cue & (owner == i)
    labels = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v < IGNORE_INDEX)
    return _Sample(np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, cue, labels, owner, placed)


def render_sample(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One sample, deterministic in (spec.seed, index) alone.

    Returns the (S, S, 3) uint8 image, the (S, S) uint8 mask (0 background, c + 1 class c, 255 boundary
    band), the (S, S) bool visible cue pixels (what an ideal CAM would find), and the sorted 0-based classes
    present in the mask.
    """
    sample = _render(spec, index)
    return sample.image, sample.mask, sample.cue, sample.labels


def _annotation_xml(name: str, sample: _Sample) -> str:
    """VOC-style XML: one <object> per object still visible in the final mask, bndbox 1-based inclusive."""
    height, width = sample.mask.shape
    objects = []
    for i, obj in enumerate(sample.objects):
        visible = (sample.owner == i) & (sample.mask == obj.cls + 1)
        if not visible.any():
            continue
        ys, xs = np.nonzero(sample.owner == i)
        objects.append(
            f"  <object>\n    <name>{SYNTHETIC_CLASSES[obj.cls]}</name>\n    <difficult>0</difficult>\n"
            f"    <bndbox><xmin>{xs.min() + 1}</xmin><ymin>{ys.min() + 1}</ymin>"
            f"<xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax></bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>synthetic</folder>\n  <filename>{name}.jpg</filename>\n"
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        + "".join(objects)
        + "</annotation>\n"
    )


def _check_not_foreign(root: Path) -> None:
    """Refuse to write into a VOC-layout folder that is not a synthetic root (e.g. the real VOC)."""
    lists = root / "ImageSets" / "Segmentation"
    for path in sorted(lists.glob("*.txt")) if lists.is_dir() else []:
        first = next((line.strip() for line in path.read_text().splitlines() if line.strip()), "")
        if first and not first.startswith("syn_"):
            raise DatasetError(
                f"{root} already holds a dataset that is not the synthetic one ({path} lists {first}); "
                "choose another root for the synthetic dataset"
            )


def ensure_synthetic_voc(root: str | Path, spec: SyntheticSpec) -> Path:
    """Generate the dataset into ``root`` unless it is complete; returns ``root``.

    Each image comes from its own ``np.random.default_rng([seed, index])``; every file is written atomically
    and files already present are kept, so an interrupted run resumes with identical results. The lists
    (``train``, ``val``, ``trainval``) and ``root/.complete`` (the spec as JSON) are written last.
    """
    root = Path(root).expanduser()
    marker = root / ".complete"
    wanted = dataclasses.asdict(spec)
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = None
        if found == wanted:
            return root
        raise DatasetError(
            f"{root} holds a synthetic dataset of another spec ({marker} differs); choose another "
            "dataset.root or delete that folder"
        )
    _check_not_foreign(root)
    train, val = spec.names()

    def render(index: int, name: str) -> VOCSample:
        sample = _render(spec, index)
        return VOCSample(sample.image, sample.mask, _annotation_xml(name, sample))

    write_voc_root(root, train + val, render, {"train": train, "val": val, "trainval": train + val}, jpeg_quality=90)
    atomic_write_text(marker, json.dumps(wanted, sort_keys=True) + "\n")
    return root
