"""Which classes each dataset name has, and where generated data is cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ..errors import ASDTUserError
from ..io_utils import cache_dir
from .synthetic import SYNTHETIC_CLASSES, SyntheticSpec
from .voc import VOC_CLASSES

DATASET_CLASSES: dict[str, tuple[str, ...]] = {"voc": tuple(VOC_CLASSES), "synthetic": tuple(SYNTHETIC_CLASSES)}


def dataset_class_names(name: str) -> list[str]:
    """Foreground class names of a known dataset."""
    if name not in DATASET_CLASSES:
        known = sorted(DATASET_CLASSES)
        raise ASDTUserError(f"unknown dataset '{name}'; set dataset.class_names or choose one of {known}")
    return list(DATASET_CLASSES[name])


def default_synthetic_root(spec: SyntheticSpec) -> Path:
    """A cache folder unique to the generator's spec, so two specs never share a root."""
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "synthetic" / digest
