"""A held-out procedural WSSS dataset, designed independently of ``asdt_lightning.data.synthetic``.

Each object is a class-agnostic *body* (a wobbly blob in a grey, blue or green tone with one of several textures,
sometimes on a darker foot) topped by a class-specific *discriminative part* (15-35 % of the object): a lamp
shade, a spotted mushroom cap, a robot head with eyes, a hammer's checkered T-bar, a striped tulip crown or a
hatched rocket nose. The class is told only by the part, so a classifier's CAM finds the part and misses the body,
while the whole object stands out from its local background by colour and edges (a dense CRF can recover it).
Images hold one to four objects (occluding one another, cut by the image border, sometimes occluded by a small
blob of no class) over a cluttered scene: a class-correlated background (wallpaper, forest floor, tiles, planks,
meadow, night sky: the scene of the first object's class with probability ``context_prob``) with distractor blobs
of no class, some body-like, some in part colours. The root is in VOC layout (see :func:`write_heldout_voc`).

    python -m benchmarks.heldout_dataset --root DIR [--seed N]
    python -m benchmarks.heldout_dataset --root outputs/heldout_root --check --seeds 0   # + train and tabulate
    python -m benchmarks.heldout_dataset --root outputs/heldout_root --check --out outputs/quality_heldout_3x \
        --override trainer.max_steps=3600 --override model.loss.classifier_warmup=1500   # 3x the budget
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import math
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from asdt_lightning.data.voc_writer import VOCSample, write_voc_root
from asdt_lightning.io_utils import atomic_write_text

HELDOUT_CLASSES: tuple[str, ...] = ("lamp", "mushroom", "robot", "hammer", "tulip", "rocket")
SCENES: tuple[str, ...] = ("wallpaper", "forest", "tiles", "planks", "meadow", "night")  # scene c goes with class c
SPEC_FILE = "heldout_spec.json"

# per class: part width (x body width), part height / width, part hue (degrees)
PART_TEMPLATES: tuple[tuple[float, float, float], ...] = (
    (0.85, 0.65, 50.0),  # lamp: a trapezoid shade, yellow, bright at the rim
    (1.10, 0.50, 0.0),  # mushroom: a dome cap, red, white spots
    (0.65, 0.90, 185.0),  # robot: a square head on a neck, cyan, scan lines, two dark eyes
    (1.15, 0.60, 25.0),  # hammer: a T-bar on a neck, orange, checkered
    (0.85, 0.80, 320.0),  # tulip: a three-petal crown, magenta, radial stripes
    (0.70, 1.20, 270.0),  # rocket: a pointed nose, violet, diagonal hatching
)


@dataclass(frozen=True)
class HeldoutSpec:
    """What the held-out dataset holds; lengths are in units of the image side unless told."""

    num_train: int = 600
    num_val: int = 150
    image_size: int = 128
    seed: int = 1234
    object_count_probs: tuple[float, ...] = (0.4, 0.3, 0.18, 0.12)  # P(1), P(2), ... objects per image
    body_radius: tuple[float, float] = (0.095, 0.18)  # of one object alone; shrinks with the object count
    part_fraction: tuple[float, float] = (0.15, 0.35)  # of the whole object's pixels
    context_prob: float = 0.7  # the scene is the first object's class's scene, else a random one
    distractors: tuple[int, int] = (2, 7)  # background blobs of no class per image (inclusive range)
    occluder_prob: float = 0.3  # a small blob of no class in front of the objects
    min_visible: float = 0.45  # of an object's pixels left after occlusion and the image border
    max_visible_part: float = 0.45  # of an object's visible pixels that may be its part
    noise_std: float = 3.0  # sensor noise, in 0..255 grey levels
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("num_train and num_val must be >= 1")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not self.object_count_probs or min(self.object_count_probs) < 0 or sum(self.object_count_probs) <= 0:
            raise ValueError("object_count_probs must be non-negative weights of 1, 2, ... objects")
        if not 0 < self.part_fraction[0] <= self.part_fraction[1] < 0.5:
            raise ValueError(f"part_fraction must be an increasing range inside (0, 0.5), got {self.part_fraction}")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"distractors must be a range of counts, got {self.distractors}")

    @property
    def total(self) -> int:
        return self.num_train + self.num_val


@dataclass(frozen=True)
class HeldoutObject:
    """One visible object: its class, VOC bounding box (1-based, inclusive) and pixel counts.

    Counts are of the full object (``full_*``, before occlusion and the border) and of its labelled pixels in the
    mask (``mask_*``: visible, outside the boundary band); ``*_part`` counts the discriminative part only.
    """

    class_index: int
    bbox: tuple[int, int, int, int]
    truncated: bool
    full_pixels: int
    full_part: int
    mask_pixels: int
    mask_part: int


@dataclass
class HeldoutSample:
    """A rendered image: (H, W, 3) uint8 ``image``, (H, W) uint8 ``mask`` (0 background, c + 1 class c, 255 band),
    (H, W) int16 ``instances`` (0 none, k + 1 object k), (H, W) bool ``part`` (labelled part pixels), the objects
    and the scene index."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    part: np.ndarray
    objects: list[HeldoutObject]
    scene: int

    @property
    def labels(self) -> list[int]:
        """Sorted unique class indices of the objects."""
        return sorted({o.class_index for o in self.objects})


@dataclass
class _Sprite:
    """An object or blob rasterised on its own canvas: masks, local coordinates and where its origin lies."""

    mask: np.ndarray  # bool (h, w)
    part: np.ndarray  # bool (h, w), within mask
    coords: dict[str, np.ndarray]  # per-pixel local coordinates, in px
    origin: tuple[int, int]  # (row, col) of the body centre in the canvas
    class_index: int | None = None
    y0: int = 0  # canvas top-left in image coordinates, once placed
    x0: int = 0


# ---------------------------------------------------------------- colours and noise


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), dtype=np.float32) * 255.0


def _body_tone(rng: np.random.Generator) -> np.ndarray:
    """A grey, blue or green tone."""
    family = rng.integers(3)
    v = rng.uniform(0.3, 0.88)
    if family == 0:
        return _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.1), v)
    hue = rng.uniform(195, 235) if family == 1 else rng.uniform(85, 150)
    return _hsv(hue, rng.uniform(0.25, 0.6), v)


def _muted_tone(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.9))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field / (field.std() + 1e-8)).astype(np.float32)


# ---------------------------------------------------------------- shapes


def _wobble(phi: np.ndarray, harmonics: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """The radius factor of a wobbly blob at angle ``phi``."""
    r = np.ones_like(phi)
    for k, amp, phase in harmonics:
        r += amp * np.cos(k * phi + phase)
    return r


def _canvas(extent: float, theta: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rotated local coordinates (u right, v down) of a square canvas reaching ``extent`` px from its centre."""
    c = math.ceil(extent) + 1
    dy, dx = np.mgrid[-c : c + 1, -c : c + 1].astype(np.float32)
    cos, sin = math.cos(theta), math.sin(theta)
    return dx * cos + dy * sin, -dx * sin + dy * cos, c


def _part_shape(cls: int, s: np.ndarray, t: np.ndarray, w: float, h: float) -> np.ndarray:
    """The class-specific part in its frame: ``s`` across, ``t`` up from the body's top, from ``-h/4`` to ``h``."""
    inside = (t >= -0.25 * h) & (t <= h)
    a = np.abs(s)
    if cls == 0:  # lamp shade: narrows to 55 % at the top
        tt = (t + 0.25 * h) / (1.25 * h)
        return inside & (a <= 0.5 * w * (1 - 0.45 * tt))
    if cls == 1:  # mushroom cap: a dome over a full-width rim
        return inside & ((s / (0.5 * w)) ** 2 + (np.maximum(t, 0) / h) ** 2 <= 1)
    if cls == 2:  # robot head on a neck
        return inside & (((t <= 0.2 * h) & (a <= 0.14 * w)) | ((t >= 0.2 * h) & (a <= 0.5 * w)))
    if cls == 3:  # hammer: a T-bar on a neck
        return inside & (((t <= 0.45 * h) & (a <= 0.15 * w)) | ((t >= 0.45 * h) & (a <= 0.5 * w)))
    if cls == 4:  # tulip crown: three petals
        d = np.min(np.abs(s[..., None] - np.array([-w / 3, 0.0, w / 3], np.float32)), axis=-1)
        top = h * (0.55 + 0.45 * np.clip(1 - d / (w / 6), 0, 1))
        return inside & (a <= 0.5 * w) & (t <= top)
    # rocket nose: a triangle
    return inside & (a <= 0.5 * w * (1 - np.clip(t, 0, h) / h))


def _object_sprite(rng: np.random.Generator, cls: int, radius: float, spec: HeldoutSpec) -> _Sprite:
    """Body, foot and part of one object, the part sized so it covers a ``spec.part_fraction`` of the object."""
    a, b = radius * rng.uniform(0.75, 1.2), radius * rng.uniform(0.85, 1.3)
    harmonics = [(k, rng.uniform(0, 0.08), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
    theta = rng.uniform(-0.7, 0.7)
    foot = (a * rng.uniform(0.4, 0.8), b * rng.uniform(0.2, 0.35)) if rng.random() < 0.5 else None
    width_rel, aspect, _ = PART_TEMPLATES[cls]
    w0 = 2 * a * width_rel * rng.uniform(0.9, 1.1)
    aspect *= rng.uniform(0.9, 1.1)
    target = rng.uniform(*spec.part_fraction)
    top, bottom = (
        b * float(_wobble(np.array([-math.pi / 2]), harmonics)[0]),
        b * float(_wobble(np.array([math.pi / 2]), harmonics)[0]),
    )
    gain = 1.0
    for _ in range(6):
        w, h = w0 * gain, w0 * gain * aspect
        extent = max(math.hypot(w / 2, top + h), 1.3 * max(a, b), bottom * 0.75 + (foot[1] if foot else 0) + 1) + 1
        u, v, c = _canvas(extent, theta)
        nu, nv = u / a, v / b
        body = np.hypot(nu, nv) <= _wobble(np.arctan2(nv, nu), harmonics)
        if foot is not None:
            body |= (np.abs(u) <= foot[0] / 2) & (v >= 0.75 * bottom) & (v <= 0.75 * bottom + foot[1])
        s, t = u, -top - v
        part = _part_shape(cls, s, t, w, h)
        mask = body | part
        frac = part.sum() / mask.sum()
        if abs(frac - target) < 0.01:
            break
        gain *= float(np.clip((target / frac) ** 0.6, 0.6, 1.6))
    ys, xs = np.nonzero(mask)
    r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = (slice(r0, r1), slice(c0, c1))
    rel = np.hypot(nu, nv) / _wobble(np.arctan2(nv, nu), harmonics)  # 1 on the body's outline
    coords = {"u": u[crop], "v": v[crop], "s": s[crop], "t": t[crop], "rel": rel[crop]}
    coords["w"], coords["h"], coords["radius"] = (np.float32(x) for x in (w, h, radius))
    return _Sprite(mask[crop], part[crop], coords, (c - r0, c - c0), cls)


def _blob_sprite(rng: np.random.Generator, radius: float) -> _Sprite:
    """A distractor of no class: a wobbly blob, a rotated rectangle or a stick."""
    kind = rng.integers(3)
    theta = rng.uniform(0, math.pi)
    u, v, c = _canvas(radius * 1.6, theta)
    if kind == 0:
        harmonics = [(k, rng.uniform(0, 0.15), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
        ax, ay = radius * rng.uniform(0.7, 1.2), radius * rng.uniform(0.6, 1.0)
        mask = np.hypot(u / ax, v / ay) <= _wobble(np.arctan2(v / ay, u / ax), harmonics)
    elif kind == 1:
        mask = (np.abs(u) <= radius * rng.uniform(0.6, 1.1)) & (np.abs(v) <= radius * rng.uniform(0.4, 0.9))
    else:
        mask = (np.abs(u) <= radius * 1.5) & (np.abs(v) <= max(1.5, radius * rng.uniform(0.12, 0.25)))
    return _Sprite(mask, np.zeros_like(mask), {"u": u, "v": v}, (c, c))


# ---------------------------------------------------------------- textures


def _scene(rng: np.random.Generator, scene: int, n: int) -> np.ndarray:
    """A (n, n, 3) float background of one of :data:`SCENES`, with a random gradient."""
    k = n / 128
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n

    def jitter(rgb: Sequence[float]) -> np.ndarray:
        return np.asarray(rgb, np.float32) + rng.uniform(-18, 18, 3).astype(np.float32)

    if scene == 0:  # wallpaper: beige with soft vertical stripes
        period = rng.uniform(10, 18) * k
        stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (xx * n) / period)
        img = jitter((205, 185, 150))[None, None] * (1 - 0.1 * stripes[..., None])
    elif scene == 1:  # forest floor: olive and brown blotches with speckle
        mix = np.clip(0.5 + 0.35 * _smooth_noise(rng, (n, n), 6 * k), 0, 1)[..., None]
        img = mix * jitter((95, 78, 45)) + (1 - mix) * jitter((60, 82, 42))
        img = img * (1 + 0.08 * _smooth_noise(rng, (n, n), 0.7)[..., None])
    elif scene == 2:  # tiles: light grey with a darker grid
        period = rng.uniform(14, 24) * k
        off = rng.uniform(0, period, 2)
        line = (((yy * n + off[0]) % period) < 1.5 * k) | (((xx * n + off[1]) % period) < 1.5 * k)
        img = np.broadcast_to(jitter((188, 190, 196)), (n, n, 3)) * np.where(line, 0.75, 1.0)[..., None]
    elif scene == 3:  # planks: brown boards with grain
        height = rng.uniform(12, 22) * k
        board = np.floor((yy * n + rng.uniform(0, height)) / height).astype(int)
        tone = 1 + 0.12 * np.sin(board * 2.7 + rng.uniform(0, 6))
        grain = 0.06 * _smooth_noise(rng, (n, n), (0.6, 5 * k))
        img = jitter((150, 104, 64))[None, None] * (tone + grain)[..., None]
        img = img * np.where(((yy * n) % height) < 1.2 * k, 0.7, 1.0)[..., None]
    elif scene == 4:  # meadow: sky over grass, a soft horizon
        horizon = rng.uniform(0.3, 0.6)
        g = np.clip((yy - horizon) / 0.08 + 0.5, 0, 1)[..., None]
        img = (1 - g) * jitter((150, 190, 228)) + g * jitter((88, 148, 60))
        img = img * (1 + 0.05 * _smooth_noise(rng, (n, n), 1.5 * k)[..., None] * g)
    else:  # night: dark navy with stars
        img = (1 - yy[..., None]) * jitter((22, 26, 58)) + yy[..., None] * jitter((45, 32, 72))
        stars = rng.random((n, n)) < 0.01
        img = np.where(stars[..., None], rng.uniform(180, 240), img)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
    return np.clip(img * (1 + rng.uniform(0, 0.25) * ramp)[..., None], 0, 255).astype(np.float32)


def _body_colour(rng: np.random.Generator, sprite: _Sprite, tone: np.ndarray, k: float) -> np.ndarray:
    """The body's colours: a tone with directional shading, a darker rim and one of four textures."""
    u, v, rel, radius = (sprite.coords[key] for key in ("u", "v", "rel", "radius"))
    psi = rng.uniform(0, 2 * math.pi)
    shade = 1 + 0.18 * (u * math.cos(psi) + v * math.sin(psi)) / radius - 0.22 * np.clip(rel, 0, 1) ** 6
    texture = rng.integers(4)
    if texture == 1:  # mottled
        shade = shade + 0.1 * _smooth_noise(rng, u.shape, 2.5 * k)
    elif texture == 2:  # ribbed across the body
        shade = shade + 0.07 * np.sin(2 * np.pi * v / (rng.uniform(4, 7) * k))
    elif texture == 3:  # speckled
        shade = shade + 0.07 * rng.standard_normal(u.shape).astype(np.float32)
    foot = rel > 1.0  # body pixels outside the blob's outline are the foot
    shade = np.where(foot, 0.7 * shade, shade)
    return tone[None, None] * shade[..., None]


def _part_colour(rng: np.random.Generator, sprite: _Sprite, k: float) -> np.ndarray:
    """The part's colours: a hue about its class's, with the class's texture."""
    cls = sprite.class_index
    assert cls is not None
    s, t, w, h = (sprite.coords[key] for key in ("s", "t", "w", "h"))
    base = _hsv(PART_TEMPLATES[cls][2] + rng.uniform(-18, 18), rng.uniform(0.55, 0.9), rng.uniform(0.65, 0.95))
    out = np.broadcast_to(base, (*s.shape, 3)).astype(np.float32)
    if cls == 0:  # shade: bright at the rim, dark at the top
        out = out * (1.1 - 0.4 * np.clip((t + 0.25 * h) / (1.25 * h), 0, 1))[..., None]
    elif cls == 1:  # white spots
        spacing = 0.3 * w
        phase = rng.uniform(0, 1, 2)
        ds = (s / spacing + phase[0]) % 1 - 0.5
        dt = (t / spacing + phase[1]) % 1 - 0.5
        out = np.where((np.hypot(ds, dt) * spacing <= 0.1 * w)[..., None], np.float32(238), out)
    elif cls == 2:  # scan lines and two eyes
        out = out * (1 - 0.2 * (np.floor(t / (2 * k)) % 2))[..., None]
        eyes = np.hypot(np.abs(s) - 0.22 * w, t - 0.62 * h) <= 0.11 * w
        out = np.where(eyes[..., None], np.float32(30), out)
    elif cls == 3:  # checkered
        p = 3.5 * k
        out = out * np.where((np.floor(s / p) + np.floor(t / p)) % 2 == 0, 1.0, 0.55)[..., None]
    elif cls == 4:  # radial stripes
        angle = np.arctan2(s, t + 0.25 * h)
        out = out * np.where(np.floor(angle / (np.pi / 9)) % 2 == 0, 1.0, 0.68)[..., None]
    else:  # diagonal hatching
        p = 5 * k
        out = out * np.where(((s + t) / p) % 1 < 0.5, 1.0, 0.6)[..., None]
    return out


# ---------------------------------------------------------------- composition


def _window(sprite: _Sprite, n: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """(image slices, sprite slices) of a placed sprite's overlap with the image, None when it is outside."""
    h, w = sprite.mask.shape
    y0, x0 = max(sprite.y0, 0), max(sprite.x0, 0)
    y1, x1 = min(sprite.y0 + h, n), min(sprite.x0 + w, n)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (
        slice(y0 - sprite.y0, y1 - sprite.y0),
        slice(x0 - sprite.x0, x1 - sprite.x0),
    )


def _place(rng: np.random.Generator, sprite: _Sprite, n: int, margin: float) -> None:
    """Put the sprite's origin at a random point at least ``margin`` px inside the image."""
    cy, cx = rng.uniform(margin, n - margin, 2)
    sprite.y0, sprite.x0 = round(float(cy)) - sprite.origin[0], round(float(cx)) - sprite.origin[1]


def _paint_ids(ids: np.ndarray, part: np.ndarray, sprite: _Sprite, value: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the id and part maps with ``sprite`` painted on top (``value`` 0: a blob of no class)."""
    ids, part = ids.copy(), part.copy()
    win = _window(sprite, ids.shape[0])
    if win is not None:
        (iy, ix), (sy, sx) = win
        m = sprite.mask[sy, sx]
        ids[iy, ix][m] = value
        part[iy, ix][m] = sprite.part[sy, sx][m]
    return ids, part


def _visible_ok(ids: np.ndarray, part: np.ndarray, sprites: Sequence[_Sprite], spec: HeldoutSpec) -> bool:
    """Whether every object keeps enough of itself and of its part, and its part stays a minority."""
    count = len(sprites)
    visible = np.bincount(ids.ravel(), minlength=count + 1)
    visible_part = np.bincount(ids[part & (ids > 0)].ravel(), minlength=count + 1)
    min_pixels = 0.012 * ids.size
    for k, sprite in enumerate(sprites, start=1):
        full, full_part = int(sprite.mask.sum()), int(sprite.part.sum())
        if visible[k] < max(spec.min_visible * full, min_pixels) or visible_part[k] < 0.5 * full_part:
            return False
        if visible_part[k] > spec.max_visible_part * visible[k]:
            return False
    return True


def _paste(image: np.ndarray, sprite: _Sprite, colours: np.ndarray) -> None:
    win = _window(sprite, image.shape[0])
    if win is not None:
        (iy, ix), (sy, sx) = win
        image[iy, ix][sprite.mask[sy, sx]] = colours[sy, sx][sprite.mask[sy, sx]]


def _ring_mean(image: np.ndarray, sprite: _Sprite, width: int) -> np.ndarray | None:
    """The mean colour of the image in a ring ``width`` px wide around a placed sprite."""
    padded = np.pad(sprite.mask, width)
    ring = ndimage.binary_dilation(padded, iterations=width) & ~padded
    n = image.shape[0]
    ys, xs = np.nonzero(ring)
    ys, xs = ys + sprite.y0 - width, xs + sprite.x0 - width
    keep = (ys >= 0) & (ys < n) & (xs >= 0) & (xs < n)
    if not keep.any():
        return None
    return image[ys[keep], xs[keep]].mean(axis=0)


def _boundary_band(ids: np.ndarray) -> np.ndarray:
    """Pixels next to (8-neighbourhood) a pixel of another object or background: a band 2 px wide."""
    padded = np.pad(ids, 1, mode="edge")
    n, m = ids.shape
    band = np.zeros(ids.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                other = padded[1 + dy : 1 + dy + n, 1 + dx : 1 + dx + m]
                band |= (other != ids) & ((other > 0) | (ids > 0))
    return band


def _try_render(rng: np.random.Generator, spec: HeldoutSpec) -> HeldoutSample | None:
    n, k = spec.image_size, spec.image_size / 128
    probs = np.asarray(spec.object_count_probs, np.float64)
    count = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
    shrink = (1.0, 0.88, 0.78, 0.7, 0.64, 0.6)[min(count, 6) - 1]
    radii = sorted((rng.uniform(*spec.body_radius) * shrink * n for _ in range(count)), reverse=True)
    classes = [int(rng.integers(len(HELDOUT_CLASSES))) for _ in range(count)]
    scene = classes[0] if rng.random() < spec.context_prob else int(rng.integers(len(SCENES)))
    image = _scene(rng, scene, n)

    for _ in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        blob = _blob_sprite(rng, rng.uniform(3, 13) * k)
        _place(rng, blob, n, 0)
        kind = rng.random()
        if kind < 0.45:
            tone = _body_tone(rng)
        elif kind < 0.8:
            tone = _muted_tone(rng)
        else:
            tone = _hsv(PART_TEMPLATES[int(rng.integers(len(PART_TEMPLATES)))][2] + rng.uniform(-20, 20), 0.7, 0.85)
        shade = 1 + 0.1 * blob.coords["u"] / (np.abs(blob.coords["u"]).max() + 1)
        _paste(image, blob, tone[None, None] * shade[..., None])

    ids = np.zeros((n, n), np.int16)
    part = np.zeros((n, n), bool)
    placed: list[_Sprite] = []
    for radius, cls in zip(radii, classes, strict=True):
        sprite = _object_sprite(rng, cls, radius, spec)
        for _ in range(25):
            _place(rng, sprite, n, 0.1 * n)
            new_ids, new_part = _paint_ids(ids, part, sprite, len(placed) + 1)
            if _visible_ok(new_ids, new_part, [*placed, sprite], spec):
                break
        else:
            continue  # no room for this object: leave it out
        ids, part = new_ids, new_part
        ring = _ring_mean(image, sprite, max(2, round(3 * k)))
        best, best_dist = None, -1.0
        for _ in range(12):  # a body tone that stands out from its local background
            tone = _body_tone(rng)
            dist = float(np.linalg.norm(tone - ring)) if ring is not None else 1e9
            if dist > best_dist:
                best, best_dist = tone, dist
            if dist >= 70:
                break
        assert best is not None
        colours = np.where(sprite.part[..., None], _part_colour(rng, sprite, k), _body_colour(rng, sprite, best, k))
        _paste(image, sprite, colours)
        placed.append(sprite)
    if not placed:
        return None

    if rng.random() < spec.occluder_prob:  # a small blob of no class in front
        blob = _blob_sprite(rng, rng.uniform(4, 9) * k)
        tone = _muted_tone(rng)
        for _ in range(10):
            _place(rng, blob, n, 0.1 * n)
            new_ids, new_part = _paint_ids(ids, part, blob, 0)
            if (new_ids != ids).any() and _visible_ok(new_ids, new_part, placed, spec):
                ids, part = new_ids, new_part
                _paste(image, blob, np.broadcast_to(tone, (*blob.mask.shape, 3)))
                break

    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0, 0.2) * (xx * math.cos(angle) + yy * math.sin(angle))
    image = ndimage.gaussian_filter(image * light[..., None], (0.5, 0.5, 0))
    image = image + rng.normal(0, spec.noise_std, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    band = _boundary_band(ids)
    placed_classes = [int(s.class_index or 0) for s in placed]  # objects always have a class
    label_of = np.array([0, *(c + 1 for c in placed_classes)], np.uint8)
    mask = label_of[ids]
    mask[band] = 255
    labelled_part = part & (ids > 0) & ~band
    objects = []
    for k_obj, sprite in enumerate(placed, start=1):
        own = ids == k_obj
        ys, xs = np.nonzero(own)
        mask_pixels = int((own & ~band).sum())
        if mask_pixels < 20:
            return None
        win = _window(sprite, n)
        inside = int(sprite.mask[win[1]].sum()) if win is not None else 0
        truncated = inside < int(sprite.mask.sum())  # cut by the image border (VOC's meaning)
        objects.append(
            HeldoutObject(
                class_index=placed_classes[k_obj - 1],
                bbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
                truncated=truncated,
                full_pixels=int(sprite.mask.sum()),
                full_part=int(sprite.part.sum()),
                mask_pixels=mask_pixels,
                mask_part=int((own & labelled_part).sum()),
            )
        )
    return HeldoutSample(image, mask, ids, labelled_part, objects, scene)


def render_heldout(spec: HeldoutSpec, index: int) -> HeldoutSample:
    """Image ``index`` of the dataset, from ``np.random.default_rng([spec.seed, index])`` alone."""
    rng = np.random.default_rng([spec.seed, index])
    for _ in range(20):
        sample = _try_render(rng, spec)
        if sample is not None:
            return sample
    raise RuntimeError(f"could not render held-out image {index} of {spec}")  # not reached in practice


# ---------------------------------------------------------------- VOC layout


def sample_name(index: int) -> str:
    return f"ho_{index:06d}"


def annotation_xml(name: str, sample: HeldoutSample) -> str:
    """A VOC-style annotation: one ``<object>`` per visible object."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "HELDOUT"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    h, w = sample.mask.shape
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in sample.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = HELDOUT_CLASSES[obj.class_index]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox, strict=True):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_heldout_voc(root: str | Path, spec: HeldoutSpec | None = None) -> Path:
    """Write (or finish writing) the held-out dataset as a VOC root; returns ``root``.

    ``JPEGImages/ho_NNNNNN.jpg``, ``SegmentationClass/*.png`` (VOC palette), ``Annotations/*.xml`` and
    ``ImageSets/Segmentation/{train,val,trainval}.txt``; ``heldout_spec.json`` records the spec, and a root
    written with another spec is refused. Every file is written atomically and existing files are kept, so an
    interrupted run resumes; the same spec always gives byte-identical files.
    """
    spec = spec or HeldoutSpec()
    root = Path(root).expanduser()
    spec_text = json.dumps(dataclasses.asdict(spec), sort_keys=True, indent=1) + "\n"
    spec_path = root / SPEC_FILE
    if spec_path.is_file():
        if spec_path.read_text() != spec_text:
            raise ValueError(f"{root} holds a held-out dataset of another spec ({spec_path}); use another root")
    else:
        atomic_write_text(spec_path, spec_text)
    names = [sample_name(i) for i in range(spec.total)]

    def render(index: int, name: str) -> VOCSample:
        sample = render_heldout(spec, index)
        return VOCSample(sample.image, sample.mask, annotation_xml(name, sample))

    lists = {"train": names[: spec.num_train], "val": names[spec.num_train :], "trainval": names}
    return write_voc_root(root, names, render, lists, jpeg_quality=spec.jpeg_quality)


def train_overrides(root: str | Path) -> list[str]:
    """Hydra overrides that train the package on a held-out root with the synthetic default's data settings
    (crop, batch, scale range, workers): only the dataset changes, the model config stays the default."""
    return [
        "dataset=voc",
        f"dataset.root={root}",
        "dataset.train_list=train",
        "dataset.val_list=val",
        f"dataset.class_names=[{','.join(HELDOUT_CLASSES)}]",
        "dataset.crop_size=128",
        "dataset.val_size=128",
        "dataset.scale_range=[0.8,1.2]",
        "dataset.batch_size=8",
        "dataset.val_batch_size=16",
        "dataset.num_workers=1",
        "dataset.pin_memory=false",
    ]


def train_command(root: str | Path) -> str:
    """The command that trains the package on a held-out root."""
    return "python -m asdt_lightning.train " + " ".join(shlex.quote(o) for o in train_overrides(root))


def quality_args(root: str | Path, out: str | Path = "outputs/quality_heldout") -> list[str]:
    """``python -m benchmarks.quality`` arguments of the held-out check: ASDT at the default duty and the
    supervised upper bound, on the held-out root."""
    only = ["--only", "ASDT duty 1/2", "--only", "fully supervised (upper bound)"]
    title = "Held-out dataset: the default configuration on data it was not tuned on"
    return ["--out", str(out), "--title", title, *only, *(f"--override={o}" for o in train_overrides(root))]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder to write the VOC-layout root to")
    parser.add_argument("--seed", type=int, default=HeldoutSpec.seed)
    parser.add_argument("--num-train", type=int, default=HeldoutSpec.num_train)
    parser.add_argument("--num-val", type=int, default=HeldoutSpec.num_val)
    parser.add_argument("--check", action="store_true", help="then train and tabulate the held-out check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of the check")
    parser.add_argument("--gather-only", action="store_true", help="the check: only gather finished runs")
    parser.add_argument("--md", default=None, help="the check's markdown table")
    parser.add_argument("--out", default="outputs/quality_heldout", help="the check's run folders")
    parser.add_argument("--override", action="append", default=[], help="the check: extra Hydra override per run")
    args = parser.parse_args(argv)
    spec = HeldoutSpec(num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    root = Path(args.root) if args.gather_only else write_heldout_voc(args.root, spec)
    if not args.gather_only:
        print(f"wrote {spec.total} images ({spec.num_train} train, {spec.num_val} val) to {root}")
        print("train on it with:")
        print(train_command(root))
    if args.check:
        from benchmarks import quality

        extra = ["--seeds", *map(str, args.seeds), *(["--gather-only"] if args.gather_only else [])]
        extra += [f"--override={o}" for o in args.override]
        quality.main([*quality_args(root, args.out), *extra, *(["--md", args.md] if args.md else [])])
    return root


if __name__ == "__main__":
    main()
