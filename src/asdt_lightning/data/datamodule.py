"""The LightningDataModule over a VOC-layout root (PASCAL VOC or the synthetic dataset)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, build_val_transform
from .voc import VOCSegmentation, check_voc_root


def seed_worker(worker_id: int) -> None:
    """Seed numpy, random and the dataset's albumentations pipeline from the worker's torch seed.

    Torch derives each worker's seed from the loader's generator, so the augmentations are reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class VOCDataModule(L.LightningDataModule):
    """Training batches (random scale, crop, flip) and validation batches (resized, padded) of a VOC root.

    Batches are dicts of ``image`` (B, 3, h, w) float32, ``mask`` (B, h, w) int64 (255 = ignore), ``valid``
    (B, h, w) bool, ``labels`` (B, C) float32, ``name`` (list of str) and ``index`` (B,) int64; h = w =
    ``crop_size`` for training and ``val_size`` for validation.
    """

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str],
        train_list: str = "train",
        val_list: str = "val",
        crop_size: int = 321,
        scale_range: Sequence[float] = (0.7, 1.3),
        hflip: bool = True,
        val_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        seed: int = 0,
        color_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self._class_names = list(class_names)
        self.train_list, self.val_list = train_list, val_list
        self.train_transform = build_train_transform(crop_size, tuple(scale_range), hflip, mean, std, color_jitter)
        self.val_transform = build_val_transform(val_size or crop_size, mean, std)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.train_set: VOCSegmentation | None = None
        self.val_set: VOCSegmentation | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def check(self) -> Path:
        """Validate the root and both lists (cheap: no image is opened); returns the resolved root."""
        return check_voc_root(self.root, [self.train_list, self.val_list], masks_required=[self.val_list])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = VOCSegmentation(self.root, self.train_list, self._class_names, self.train_transform)
        if self.val_set is None:
            self.val_set = VOCSegmentation(self.root, self.val_list, self._class_names, self.val_transform)

    def _loader(self, dataset: VOCSegmentation, batch_size: int, train: bool) -> DataLoader:
        if train and dataset.transform is not None:  # reproducible augmentation in the main process too
            dataset.transform.set_random_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        assert self.val_set is not None
        return self._loader(self.val_set, self.val_batch_size, train=False)
