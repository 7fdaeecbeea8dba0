"""The COCO-Stuff 10K v1.1 reader and dataset: layout, image labels from the cached id counts, label maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import IGNORE_INDEX
from ...errors import DatasetError
from ..dataset import SegmentationDataset, SegmentationReader, list_file_path
from ..voc import mask_mode_problem, read_mask
from .annotations import check_raw_ids, read_mat_labels
from .cache import LabelCache, default_label_cache
from .ids import COCO_STUFF_182, COCO_STUFF_URL, class_ids, coco_stuff_class_names, id_lookup


def resolve_coco_stuff_root(root: str | Path) -> Path:
    """Accept the folder holding ``images/`` and ``imageLists/`` (the unzipped release), or its ``dataset/``."""
    path = Path(root).expanduser()
    for candidate in (path, path / "dataset", path / "cocostuff-10k-v1.1"):
        if (candidate / "images").is_dir() and (candidate / "imageLists").is_dir():
            return candidate
    raise DatasetError(
        f"no COCO-Stuff 10K dataset at {path} (no images/ and imageLists/ there); download {COCO_STUFF_URL}, "
        "unzip it and set dataset.root (or COCO_STUFF_ROOT) to that folder"
    )


class CocoStuffReader(SegmentationReader):
    """The COCO-Stuff 10K v1.1 layout; label maps in the contiguous space of ``classes`` (171 or 182), no
    background class. Image labels: the classes with at least ``min_label_pixels`` pixels in the label map."""

    name = "coco_stuff"
    download_hint = f"re-extract the images ({COCO_STUFF_URL}) or fix the list"

    def __init__(
        self,
        root: str | Path,
        classes: int = 171,
        class_names: Sequence[str] | None = None,
        label_cache: str | Path | None = None,
        min_label_pixels: int = 1,
        workers: int = 0,
    ) -> None:
        names = coco_stuff_class_names(classes)
        if class_names is not None and len(class_names) != len(names):
            raise DatasetError(
                f"dataset.class_names has {len(class_names)} names but dataset.classes={classes}; give {len(names)}"
            )
        if min_label_pixels < 1:
            raise DatasetError(f"dataset.min_label_pixels must be >= 1, got {min_label_pixels}")
        super().__init__(root, class_names or names, has_background=False)
        self.classes = classes
        self.ids = class_ids(classes)
        self.lookup = id_lookup(classes)
        self.min_label_pixels = min_label_pixels
        self.workers = workers
        self._label_cache = Path(label_cache).expanduser() if label_cache else None

    def resolve_root(self) -> Path:
        return resolve_coco_stuff_root(self.given_root)

    @property
    def cache(self) -> LabelCache:
        return LabelCache(self._label_cache or default_label_cache(self.root))

    def list_path(self, split: str) -> Path:
        return list_file_path(self.root / "imageLists", split)

    def list_hint(self, split: str) -> str:
        return f" (imageLists/ of {COCO_STUFF_URL} has train, test and all; or set dataset.train_list to a path)"

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def source(self, name: str) -> Path | None:
        """The official ``annotations/<name>.mat``, else ``annotations/<name>.png`` (raw ids), else None."""
        for suffix in (".mat", ".png"):
            path = self.root / "annotations" / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        if (targets or masks_required) and not (self.root / "annotations").is_dir():
            raise DatasetError(
                f"{self.root / 'annotations'} is missing: labels and image labels come from its .mat files "
                f"({COCO_STUFF_URL})"
            )

    def annotation_problem(self, name: str) -> str | None:
        if self.source(name) is None:
            return f"annotation {self.root / 'annotations' / name}.mat (or .png) is missing ({COCO_STUFF_URL})"
        return None

    def prepare(
        self, splits: Sequence[str], workers: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> None:
        names = dict.fromkeys(n for split in splits for n in self.read_list(split))
        sources = {n: p for n in names if (p := self.source(n)) is not None}
        self.cache.update(sources, self.workers if workers is None else workers, progress)

    def id_counts(self, names: Sequence[str]) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Pixels per raw id of each entry's label map (converting what is not cached yet), and bad files."""
        sources = {n: p for n in names if (p := self.source(n)) is not None}
        return self.cache.update(sources, self.workers)

    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        counts, problems = self.id_counts(names)
        labels: dict[str, list[int]] = {}
        for name, ids in counts.items():
            present = [int(i) for i, c in ids.items() if c >= self.min_label_pixels]
            unmapped = [i for i in present if self.lookup[i] == IGNORE_INDEX]
            if unmapped:
                problems[name] = (
                    f"annotation {self.source(name)} uses COCO-Stuff id {unmapped[0]} "
                    f"('{COCO_STUFF_182[unmapped[0] - 1]}'), which dataset.classes={self.classes} does not map; "
                    "use dataset.classes=182"
                )
                continue
            labels[name] = sorted(int(self.lookup[i]) for i in present)
        return labels, problems

    def mask_file(self, name: str) -> Path | None:
        src = self.source(name)
        if src is None or src.suffix != ".mat":
            return src
        png = self.cache.png(name)
        if not png.is_file():  # not converted (yet): convert this one now
            self.cache.update({name: src})
        return png if png.is_file() else src

    def decode_mask(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return self.lookup[read_mat_labels(path)]
        raw = read_mask(path)
        if path.parent != self.cache.labels:  # a user's PNG: check its ids (the cache's were checked once)
            check_raw_ids(raw, path)
        return self.lookup[raw]

    def mask_header_file(self, name: str) -> Path | None:
        """The converted PNG of a ``.mat`` (or the user's PNG): PIL cannot read a ``.mat`` header, and a ``.mat``
        left unconverted is one whose conversion failed, which :meth:`load_labels` reports already."""
        path = self.mask_file(name)
        return None if path is None or path.suffix == ".mat" else path

    def mask_header_problem(self, path: Path, mode: str) -> str | None:
        return mask_mode_problem(path, mode)

    def header_problem(self, name: str, targets: bool = True) -> str | None:
        """As for any reader; a problem of a converted PNG also names the ``.mat`` to fix."""
        problem = super().header_problem(name, targets)
        png = self.cache.png(name)
        if problem is not None and str(png) in problem and (src := self.source(name)) is not None:
            problem += f" (converted from {src})"
        return problem


class CocoStuffSegmentation(SegmentationDataset):
    """:class:`SegmentationDataset` of one list of a COCO-Stuff 10K root (see there for the sample contract)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: int = 171,
        transform: Callable[..., Any] | None = None,
        targets: bool = True,
        on_bad_sample: str = "error",
        label_cache: str | Path | None = None,
    ) -> None:
        reader = CocoStuffReader(root, classes, label_cache=label_cache)
        super().__init__(reader, split, transform, targets, on_bad_sample)
