"""The dataset names of ``conf/dataset/``: their classes, their readers and their DataModule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ASDTUserError, DatasetError
from ..io_utils import cache_dir
from .coco import COCO_CLASSES, CocoReader
from .coco_stuff import CocoStuffReader, coco_stuff_class_names
from .datamodule import SegmentationDataModule
from .dataset import SegmentationReader
from .synthetic import SYNTHETIC_CLASSES, SyntheticSpec, ensure_synthetic_voc
from .voc import VOC_CLASSES, VOCReader

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": tuple(VOC_CLASSES),
    "synthetic": tuple(SYNTHETIC_CLASSES),
    "coco_stuff": tuple(coco_stuff_class_names(171)),
    "coco": COCO_CLASSES,
}


def dataset_class_names(name: str) -> list[str]:
    """Foreground class names of a known dataset (COCO-Stuff: the 171 used classes)."""
    if name not in DATASET_CLASSES:
        known = sorted(DATASET_CLASSES)
        raise ASDTUserError(f"unknown dataset '{name}'; set dataset.class_names or choose one of {known}")
    return list(DATASET_CLASSES[name])


def config_class_names(data: Mapping[str, Any]) -> list[str]:
    """The foreground class names a ``dataset`` config trains on, without opening its root."""
    if data.get("class_names"):
        return list(data["class_names"])
    if data["name"] == "coco_stuff":
        return list(coco_stuff_class_names(int(data.get("classes", 171))))
    return dataset_class_names(data["name"])


def default_synthetic_root(spec: SyntheticSpec) -> Path:
    """A cache folder unique to the generator's spec, so two specs never share a root."""
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "synthetic" / digest


def build_reader(data: Mapping[str, Any]) -> SegmentationReader:
    """The reader of a ``dataset`` config (``synthetic`` is generated first when its root is missing)."""
    name = data["name"]
    class_names = data.get("class_names")
    if name == "coco_stuff":
        return CocoStuffReader(
            data["root"],
            classes=int(data.get("classes", 171)),
            class_names=class_names,
            label_cache=data.get("label_cache"),
            min_label_pixels=int(data.get("min_label_pixels", 1)),
            workers=int(data.get("num_workers", 0)),
        )
    if name == "coco":
        return CocoReader(
            data["root"],
            year=int(data.get("year", 2014)),
            source=str(data.get("source", "auto")),
            class_names=class_names,
            image_dir=data.get("image_dir"),
            annotation_dir=data.get("annotation_dir"),
            mask_dir=data.get("mask_dir"),
            label_cache=data.get("label_cache"),
            min_label_pixels=int(data.get("min_label_pixels", 1)),
            label_source=str(data.get("label_source", "mask")),
            png_ids=str(data.get("png_ids", "contiguous")),
            workers=int(data.get("num_workers", 0)),
        )
    if name == "synthetic":
        spec = SyntheticSpec(**data["synthetic"])
        root = ensure_synthetic_voc(data["root"] or default_synthetic_root(spec), spec)
        return VOCReader(root, class_names or SYNTHETIC_CLASSES)
    return VOCReader(data["root"], class_names or dataset_class_names(name))


def reader_for(data: Mapping[str, Any]) -> SegmentationReader:
    """The reader of a ``dataset`` config (the synthetic set is generated first if needed), checked against
    ``dataset.has_background``."""
    reader = build_reader(data)
    if bool(data["has_background"]) != reader.has_background:
        raise DatasetError(
            f"dataset.has_background={data['has_background']} but {data['name']} "
            f"{'has' if reader.has_background else 'has no'} background class; leave it as conf/dataset sets it"
        )
    return reader


def build_datamodule(data: Mapping[str, Any], seed: int) -> SegmentationDataModule:
    """The DataModule of a ``dataset`` config, after the cheap check that ``prepare`` also runs."""
    reader = reader_for(data)
    datamodule = SegmentationDataModule(
        reader,
        train_list=data["train_list"],
        val_list=data["val_list"],
        crop_size=data["crop_size"],
        scale_range=tuple(data["scale_range"]),
        hflip=data["hflip"],
        val_size=data["val_size"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        batch_size=data["batch_size"],
        val_batch_size=data["val_batch_size"],
        num_workers=data["num_workers"],
        pin_memory=data["pin_memory"],
        seed=seed,
        color_jitter=data.get("color_jitter", 0.0),
        on_bad_sample=data.get("on_bad_sample", "error"),
        resize_long=data.get("resize_long"),
        background_list=data.get("background_list"),
    )
    datamodule.check()
    return datamodule
