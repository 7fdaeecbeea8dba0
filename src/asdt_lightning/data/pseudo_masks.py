"""Training on exported pseudo masks: a VOC list whose masks come from a pseudo-mask folder (second stage)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from .datamodule import VOCDataModule
from .transforms import apply_transform
from .voc import VOCSegmentation, read_mask, read_split, resolve_voc_root


def missing_pseudo_masks(mask_dir: Path, names: Sequence[str]) -> list[str]:
    """Names whose ``<mask_dir>/<name>.png`` does not exist."""
    return [n for n in names if not (mask_dir / f"{n}.png").is_file()]


def check_pseudo_mask_dir(mask_dir: str | Path, root: str | Path, split: str) -> Path:
    """Cheap check that ``mask_dir`` holds a PNG for every image of ``split``; returns the folder."""
    mask_dir = Path(mask_dir).expanduser()
    if not mask_dir.is_dir():
        raise DatasetError(
            f"pseudo-mask folder {mask_dir} not found; export one with python -m asdt_lightning.pseudo_labels"
        )
    names = read_split(resolve_voc_root(root), split)
    missing = missing_pseudo_masks(mask_dir, names)
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(names)} images of '{split}' have no pseudo mask in {mask_dir} (e.g. "
            f"{missing[0]}.png); finish the export (re-run pseudo_labels: it resumes) or pick the matching split"
        )
    return mask_dir


class PseudoMaskSegmentation(VOCSegmentation):
    """``VOCSegmentation`` whose masks are read from ``mask_dir/<name>.png`` (palette PNGs, 255 = ignore)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        mask_dir: str | Path,
        transform: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(root, split, class_names, transform)
        self.mask_dir = check_pseudo_mask_dir(mask_dir, self.root, split)

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, _ = super().read_sample(index)
        path = self.mask_dir / f"{self.names[index]}.png"
        mask = read_mask(path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"pseudo mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; re-export the pseudo masks"
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.read_sample(index)
        image_t, mask_t, valid = apply_transform(self.transform, image, mask)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[self.image_labels[index]] = 1.0
        return {"image": image_t, "mask": mask_t, "valid": valid, "labels": labels, "name": self.names[index]}


class PseudoMaskDataModule(VOCDataModule):
    """The VOC DataModule with training masks from a pseudo-mask folder; validation uses the real masks."""

    def __init__(self, *args: Any, mask_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_dir = Path(mask_dir).expanduser()

    def check(self) -> Path:
        root = super().check()
        check_pseudo_mask_dir(self.mask_dir, root, self.train_list)
        return root

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = PseudoMaskSegmentation(
                self.root, self.train_list, self.class_names, self.mask_dir, self.train_transform
            )
        super().setup("validate")
