"""The LightningDataModule over any dataset reader (PASCAL VOC, COCO-Stuff 10K, the synthetic dataset)."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import DatasetError
from .dataset import DatasetWarning, ReaderView, SegmentationDataset, SegmentationReader, SkipBadCollate, check_policy
from .sampling import EpochSampler, ResumableLoader, distributed_shard, seed_transform
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, build_val_transform
from .voc import VOC_CLASSES, VOCReader


def seed_worker(worker_id: int) -> None:
    """Seed numpy, random and the dataset's albumentations pipeline from the worker's torch seed.

    Torch derives each worker's seed from the loader's generator. Training samples reseed the pipeline from
    their :class:`~.sampling.EpochSampler` seed anyway; this covers datasets read by plain indices.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transform(getattr(info.dataset, "transform", None), seed)


class SegmentationDataModule(ReaderView, L.LightningDataModule):
    """Training batches (random scale, crop, flip, jitter) and validation batches (resized, padded) of a reader.

    Batches are dicts of ``image`` (B, 3, h, w) float32, ``mask`` (B, h, w) int64 (255 = ignore), ``valid``
    (B, h, w) bool, ``labels`` (B, C) float32, ``size`` (B, 2) int64 original (H, W), ``name`` (list of str) and
    ``index`` (B,) int64; h = w = ``crop_size`` for training and ``val_size`` for validation. With
    ``on_bad_sample="skip"`` a batch may hold fewer samples; the skipped names are counted
    (:attr:`bad_samples`) and reported when a fit or validation ends. ``background_list``: a list of images that
    hold none of the classes, trained on beside ``train_list`` with an empty image label (no annotation needed).
    """

    def __init__(
        self,
        reader: SegmentationReader,
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
        color_jitter: float | Mapping[str, float] = 0.0,
        on_bad_sample: str = "error",
        resize_long: Sequence[int] | None = None,
        background_list: str | None = None,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.train_list, self.val_list = train_list, val_list
        self.background_list = background_list  # background-only images trained on beside train_list
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = build_train_transform(
            crop_size,
            tuple(scale_range),
            hflip,
            mean,
            std,
            color_jitter,
            resize_long=tuple(resize_long) if resize_long is not None else None,
        )
        self.val_transform = build_val_transform(val_size or crop_size, mean, std)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.on_bad_sample = check_policy(on_bad_sample)
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        self.bad_samples: Counter[str] = Counter()  # name -> times skipped while loading
        self._warned_for: tuple[frozenset[str], frozenset[str]] | None = None  # what teardown last warned of

    def check(self) -> Path:
        """Validate the root and both lists (cheap: no image is opened); returns the resolved root."""
        if self.background_list is not None and not self.reader.has_background:
            raise DatasetError(
                f"dataset.background_list={self.background_list} needs a background class; "
                f"{self.reader.name} has none: leave it null"
            )
        extra = [] if self.background_list is None else [self.background_list]
        return self.reader.check([self.train_list, self.val_list, *extra], masks_required=[self.val_list])

    def prepare_data(self) -> None:
        """One-time conversions (COCO-Stuff's ``.mat`` -> PNG cache); Lightning runs it on one process."""
        self.reader.prepare([self.train_list, self.val_list])

    def setup(self, stage: str | None = None) -> None:
        """Resolve the lists (after :meth:`prepare_data`, before the first step): missing files, bad labels and
        what the image and mask headers show raise, or are skipped (see :meth:`SegmentationReader.entries`)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = SegmentationDataset(
                self.reader, self.train_list, self.train_transform, True, self.on_bad_sample, self.background_list
            )
        if self.val_set is None:
            self.val_set = self.dataset(self.val_list, self.val_transform)
            self.reader.require_masks(self.val_list, self.val_set.names)  # else mIoU would silently skip images

    def dataset(self, split: str, transform: Any = None, targets: bool = True) -> SegmentationDataset:
        """A dataset of any list of the root (``targets=False``: images, names and sizes only, e.g. VOC test)."""
        return SegmentationDataset(self.reader, split, transform, targets, self.on_bad_sample)

    def loader(self, dataset: SegmentationDataset, batch_size: int, train: bool) -> DataLoader:
        """A DataLoader with this module's workers, seeding and bad-sample handling.

        Training: a :class:`~.sampling.ResumableLoader` (full batches only) whose order and augmentations follow
        from ``(seed, epoch, position)`` and which checkpoints resume mid-epoch; this rank's share under DDP.
        """
        settings: dict[str, Any] = dict(
            batch_size=batch_size,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=SkipBadCollate(dataset),
        )
        if not train:
            return DataLoader(dataset, shuffle=False, **settings)
        sampler = EpochSampler(dataset, self.seed, **distributed_shard(self.trainer))
        return ResumableLoader(dataset, sampler=sampler, **settings)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return self.loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        assert self.val_set is not None
        return self.loader(self.val_set, self.val_batch_size, train=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count and remove ``batch["skipped"]`` (names of bad samples dropped by the collate)."""
        if isinstance(batch, dict) and "skipped" in batch:
            self.bad_samples.update(batch.pop("skipped"))
        return batch

    def skipped_summary(self) -> str | None:
        """One line on what ``on_bad_sample=skip`` skipped (list entries and samples), or None."""
        entries = {n for ds in (self.train_set, self.val_set) if ds is not None for n in ds.skipped}
        if not entries and not self.bad_samples:
            return None
        names = sorted(self.bad_samples)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return (
            f"dataset.on_bad_sample=skip skipped {len(entries)} list entr(ies) and {len(names)} unreadable "
            f"sample(s) ({sum(self.bad_samples.values())} reads){': ' + shown if names else ''}"
        )

    def teardown(self, stage: str) -> None:
        """Warn what was skipped, once (fit then validate tear down twice; repeated only if more was skipped)."""
        summary = self.skipped_summary()
        skipped = (
            frozenset(n for ds in (self.train_set, self.val_set) if ds for n in ds.skipped),
            frozenset(self.bad_samples),
        )
        if summary is not None and skipped != self._warned_for:
            warnings.warn(summary, DatasetWarning, 2)
            self._warned_for = skipped


class VOCDataModule(SegmentationDataModule):
    """:class:`SegmentationDataModule` of a VOC-layout root (PASCAL VOC or the synthetic dataset)."""

    def __init__(self, root: str | Path, class_names: Sequence[str] = VOC_CLASSES, **kwargs: Any) -> None:
        super().__init__(VOCReader(root, class_names), **kwargs)
