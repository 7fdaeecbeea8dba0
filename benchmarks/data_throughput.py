"""Images per second per DataLoader worker of each DataModule, at the default crop, and where the time goes.

    python -m benchmarks.data_throughput [--images 48] [--json out.json]

Builds tiny roots with realistic images (VOC: 500x375 JPEGs with XMLs and palette masks; COCO-Stuff: 640x480
JPEGs with v1.1 ``.mat`` annotations, converted once into the PNG cache, timed separately), then times, in one
process (= one worker), full training samples (decode, random scale, crop 321, flip, normalise, to tensors) and
each stage alone: JPEG decode, mask PNG decode, the albumentations pipeline, and the tensor conversion.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny-root builders of the tests


def _images(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Photo-like test images: smooth gradients and blobs plus noise (JPEG sizes close to real photos)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        base = np.stack([np.sin(6 * (xx + yy) * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)], -1)
        image = 120 + 80 * base + rng.normal(0, 12, (h, w, 3))
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def build_roots(tmp: Path, n: int) -> dict[str, Any]:
    """A VOC and a COCO-Stuff root of ``n`` realistic images each; returns their readers."""
    from asdt_lightning.data.coco_stuff import CocoStuffReader
    from asdt_lightning.data.voc import VOC_CLASSES, VOCReader
    from data_roots import make_coco, make_voc

    objects = {f"2008_{k:06d}": [VOC_CLASSES[k % 20], VOC_CLASSES[(k + 7) % 20]] for k in range(n)}
    voc = make_voc(tmp / "voc", objects, size=(375, 500), lists={"train_aug": list(objects)})
    for name, image in zip(objects, _images(n, (375, 500), 0), strict=True):
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
    coco = make_coco(tmp / "coco", n=n, size=(480, 640))
    for k, image in enumerate(_images(n, (480, 640), 1)):
        Image.fromarray(image).save(coco / "images" / f"COCO_train2014_{k:012d}.jpg", quality=90)
    return {"voc": VOCReader(voc), "coco_stuff": CocoStuffReader(coco, label_cache=tmp / "coco_cache")}


def _rate(fn: Callable[[int], Any], n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` calls per second of ``fn(i)`` over i < n."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return n / best


def measure(reader: Any, split: str, crop: int = 321) -> dict[str, float]:
    """Samples per second in this process (one worker) for the full sample and for each stage alone."""
    from asdt_lightning.data.dataset import SegmentationDataset, read_image
    from asdt_lightning.data.transforms import apply_transform, build_train_transform

    transform = build_train_transform(crop, (0.7, 1.3), True)
    transform.set_random_seed(0)
    ds = SegmentationDataset(reader, split, transform)
    n = len(ds)
    raw = [reader.read_sample(name) for name in ds.names]
    out = {
        "full_sample": _rate(lambda i: ds[i], n),
        "jpeg_decode": _rate(lambda i: read_image(reader.image_path(ds.names[i])), n),
        "mask_decode": _rate(lambda i: reader.decode_mask(reader.mask_file(ds.names[i])), n),
        "augment": _rate(lambda i: transform(image=raw[i][0], mask=raw[i][1], valid=raw[i][1]), n),
        "augment_and_tensors": _rate(lambda i: apply_transform(transform, *raw[i]), n),
    }
    return {k: round(v, 1) for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images per generated root")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker runs one thread of Python
    import cv2

    cv2.setNumThreads(1)
    results: dict[str, Any] = {"images": args.images, "crop": 321}
    with tempfile.TemporaryDirectory() as tmp:
        readers = build_roots(Path(tmp), args.images)
        start = time.perf_counter()
        readers["coco_stuff"].prepare(["all"])
        results["coco_mat_conversion_per_s"] = round(args.images / (time.perf_counter() - start), 1)
        results["voc"] = measure(readers["voc"], "train_aug")
        results["coco_stuff"] = measure(readers["coco_stuff"], "all")
    lines = [f"data throughput per worker (crop 321, {args.images} images, best of 3), samples/s:"]
    for name in ("voc", "coco_stuff"):
        r = results[name]
        lines.append(f"  {name:<11} " + "  ".join(f"{k}={v}" for k, v in r.items()))
    lines.append(f"  COCO-Stuff .mat -> PNG conversion (one process): {results['coco_mat_conversion_per_s']} files/s")
    lines.append("where a sample's time goes (ms; share of the full sample):")
    for name in ("voc", "coco_stuff"):
        r = results[name]
        total = 1000 / r["full_sample"]
        stages = {
            "JPEG decode": r["jpeg_decode"],
            "mask decode": r["mask_decode"],
            "augment + to tensors": r["augment_and_tensors"],
        }
        parts = {k: 1000 / v for k, v in stages.items()}
        parts["the rest (file checks, labels, collation glue)"] = max(0.0, total - sum(parts.values()))
        bound = max(parts, key=parts.get)
        shown = ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in parts.items())
        lines.append(f"  {name:<11} {total:.2f} ms: {shown}; bound by {bound}")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
