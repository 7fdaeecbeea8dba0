"""Training on exported pseudo masks (second stage): a reader whose training masks come from a folder.

The folder holds ``<name>.png`` palette PNGs in the label space (as written by ``pseudo_labels``); validation
keeps the dataset's real masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .datamodule import SegmentationDataModule
from .dataset import SegmentationReader
from .registry import build_datamodule
from .voc import read_mask


def missing_pseudo_masks(mask_dir: Path, names: Sequence[str]) -> list[str]:
    """Names whose ``<mask_dir>/<name>.png`` does not exist."""
    return [n for n in names if not (mask_dir / f"{n}.png").is_file()]


class PseudoMaskReader(SegmentationReader):
    """Delegates to ``base`` except for the masks of ``pseudo_names``, read from ``mask_dir/<name>.png``."""

    def __init__(self, base: SegmentationReader, mask_dir: str | Path, pseudo_names: Sequence[str]) -> None:
        super().__init__(base.given_root, base.class_names, base.has_background)
        self.base = base
        self.name = base.name
        self.download_hint = base.download_hint
        self.mask_dir = Path(mask_dir).expanduser()
        self.pseudo_names = frozenset(pseudo_names)

    def resolve_root(self) -> Path:
        return self.base.root

    def list_path(self, split: str) -> Path:
        return self.base.list_path(split)

    def list_hint(self, split: str) -> str:
        return self.base.list_hint(split)

    def image_path(self, name: str) -> Path:
        return self.base.image_path(name)

    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        self.base.check_layout(splits, masks_required, targets)

    def annotation_problem(self, name: str) -> str | None:
        return self.base.annotation_problem(name)

    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        return self.base.load_labels(names)

    def prepare(self, splits: Sequence[str], workers: int = 0, progress: Any = None) -> None:
        self.base.prepare(splits, workers, progress)

    def mask_file(self, name: str) -> Path | None:
        if name in self.pseudo_names:
            return self.mask_dir / f"{name}.png"
        return self.base.mask_file(name)

    def decode_mask(self, path: Path) -> np.ndarray:
        if path.parent == self.mask_dir:
            return read_mask(path)
        return self.base.decode_mask(path)


def pseudo_mask_datamodule(data: Mapping[str, Any], seed: int, mask_dir: str | Path) -> SegmentationDataModule:
    """The dataset's DataModule with the training list's masks read from ``mask_dir`` (checked: the folder
    exists, covers the training list, and the validation list shares no image with it)."""
    datamodule = build_datamodule(data, seed)
    mask_dir = Path(mask_dir).expanduser()
    if not mask_dir.is_dir():
        raise DatasetError(
            f"pseudo-mask folder {mask_dir} not found; export one with python -m asdt_lightning.pseudo_labels"
        )
    base = datamodule.reader
    train = base.read_list(datamodule.train_list)
    missing = missing_pseudo_masks(mask_dir, train)
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(train)} images of '{datamodule.train_list}' have no pseudo mask in {mask_dir} "
            f"(e.g. {missing[0]}.png); finish the export (re-run pseudo_labels: it resumes) or match the lists"
        )
    shared = set(train) & set(base.read_list(datamodule.val_list))
    if shared:
        raise DatasetError(
            f"the validation list '{datamodule.val_list}' shares {len(shared)} images with the training list "
            f"(e.g. {sorted(shared)[0]}); stage two validates on real masks of held-out images"
        )
    datamodule.reader = PseudoMaskReader(base, mask_dir, train)
    return datamodule
