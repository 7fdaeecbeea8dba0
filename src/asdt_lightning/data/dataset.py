"""One dataset interface for every layout: a *reader* knows a layout's files, the dataset transforms samples.

A :class:`SegmentationReader` (VOC, COCO-Stuff; the synthetic dataset is written in VOC layout) resolves a root,
lists a split, finds each image and label map and gives image-level labels; :class:`SegmentationDataset` and the
DataModule work with any reader.

Where bad samples are caught (``on_bad_sample``: ``error`` or ``skip``):

- *Cheap* problems are found when a split is resolved (:meth:`SegmentationReader.entries`, run by the
  DataModule's ``setup()`` before the first step, after the synthetic root is generated and COCO-Stuff's labels
  are converted): a list entry whose image (or annotation) file is missing, an XML naming an unknown class, a
  label map with an id outside the class mapping, and, from the file headers alone (no decode, a thread pool:
  seconds for VOC's 10,582 pairs), an image or mask that does not open, a mask of another size than its image
  or of a colour mode. ``error`` raises one :class:`DatasetError` counting them and naming the first few files;
  ``skip`` drops the entries with one warning.
- Problems that only a decode finds (a truncated JPEG body, a label value outside the classes) are found in
  ``__getitem__``: ``error`` raises; ``skip`` returns a :class:`BadSample` marker, which :class:`SkipBadCollate`
  drops from the batch (a batch left empty takes the next good samples) and lists in ``batch["skipped"]``; the
  DataModule pops that key before the batch reaches the model and reports the count at the end.
  Decoding every image before training would cost a pass over the data at every start; ``prepare`` does that
  pass once, on demand (``scan=true``).
"""

from __future__ import annotations

import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from .sampling import seed_transform
from .transforms import apply_transform

BAD_SAMPLE_POLICIES = ("error", "skip")
SHOWN_PROBLEMS = 3  # problem lines quoted by the error of on_bad_sample=error
HEADER_THREADS = 8  # header reads from a cold disk wait on it: threads overlap the waits
HEADER_PILOT = 256  # entries whose headers are read first in the calling thread, timed
COLD_HEADER_S = 4e-4  # slower an entry than this is a cold disk (the page cache serves one in ~0.15 ms)
T = TypeVar("T")


class DatasetWarning(UserWarning):
    """A bad sample or list entry that ``on_bad_sample=skip`` skipped."""


def check_policy(on_bad_sample: str) -> str:
    """Validate ``dataset.on_bad_sample``."""
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise DatasetError(
            f"dataset.on_bad_sample must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {on_bad_sample!r}"
        )
    return on_bad_sample


def list_file_path(list_dir: Path, split: str) -> Path:
    """A list name (``train``, ``val``, ``train_aug``...) in ``list_dir``, or a ``.txt`` path."""
    if split.endswith(".txt") or "/" in split or os.sep in split:
        return Path(split).expanduser()
    return list_dir / f"{split}.txt"


def read_list_file(path: Path, hint: str = "") -> list[str]:
    """The image ids of a list file: the stem of each line's first column (``images/x.jpg y.png`` lines work)."""
    if not path.is_file():
        raise DatasetError(f"image list {path} not found{hint}")
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"image list {path} is empty; it needs one image id per line")
    return names


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; an unreadable or truncated file raises a DatasetError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable("image", path, err) from None


def unreadable(kind: str, path: Path, err: Exception) -> DatasetError:
    """The error of an image or mask file that PIL cannot open or decode."""
    reason = "not an image file PIL knows" if isinstance(err, UnidentifiedImageError) else err  # PIL's names the path
    return DatasetError(f"cannot read {kind} {path}: {reason}; fix or remove that file")


def read_header(path: Path, kind: str = "image") -> tuple[tuple[int, int], str]:
    """(width, height) and mode of an image file from its header alone (no decode); raises like :func:`read_image`."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable(kind, path, err) from None


def map_headers(read: Callable[[str], T], names: list[str]) -> list[T]:
    """``read`` of every name: the first :data:`HEADER_PILOT` here, timed; the rest here too when the page cache
    served them (threads would only contend for the GIL: 2-3x slower), else in :data:`HEADER_THREADS` threads
    (their disk waits overlap: 10,582 VOC pairs took 7-12 s cold in one thread, 4 s in 8)."""
    start = time.perf_counter()
    results = [read(n) for n in names[:HEADER_PILOT]]
    rest = names[HEADER_PILOT:]
    if rest and time.perf_counter() - start > COLD_HEADER_S * len(results):
        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            return results + list(pool.map(read, rest))
    return results + [read(n) for n in rest]


def size_mismatch(mask: Path, mask_size: tuple[int, int], image_size: tuple[int, int]) -> str:
    """The problem line of a mask of another (width, height) than its image."""
    return (
        f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image is {image_size[0]}x{image_size[1]}; "
        "fix or remove that mask"
    )


@dataclass
class SplitEntries:
    """The usable entries of a list: ``names``, their ``labels`` (sorted class indices; None without targets),
    and the ``skipped`` entries with one problem line each."""

    split: str
    names: list[str]
    labels: list[list[int]] | None
    skipped: dict[str, str] = field(default_factory=dict)


def resolve_problems(split: str, problems: dict[str, str], on_bad_sample: str) -> None:
    """Raise on the first problem (``error``), warn once with the count (``skip``), or pass (``report``: the
    caller lists them)."""
    if not problems or on_bad_sample == "report":
        return
    lines = list(problems.values())
    if on_bad_sample == "error":
        raise DatasetError(problems_message(split, lines))
    warnings.warn(f"skipping {len(lines)} bad entr(ies) of list '{split}', e.g. {lines[0]}", DatasetWarning, 2)


def problems_message(split: str, lines: Sequence[str]) -> str:
    """One line for ``on_bad_sample=error``: the problem, or the count and the first few problems."""
    skip = "set dataset.on_bad_sample=skip to skip bad entries"
    if len(lines) == 1:
        return f"{lines[0]}; or {skip}"
    shown = " | ".join(lines[:SHOWN_PROBLEMS])
    more = f" | and {len(lines) - SHOWN_PROBLEMS} more" if len(lines) > SHOWN_PROBLEMS else ""
    return (
        f"{len(lines)} bad entries in list '{split}': {shown}{more} (python -m asdt_lightning.prepare lists them "
        f"all); fix them, or {skip}"
    )


class SegmentationReader(ABC):
    """What a dataset layout provides: root, lists, image and label-map files, image-level labels.

    Label maps are returned in the training label space: (H, W) uint8, ``0..C-1`` class indices (offset by one
    when ``has_background``: 0 = background, ``c + 1`` = class ``c``), 255 = ignore.
    """

    name: str = "dataset"
    download_hint: str = ""
    image_only_lists: tuple[str, ...] = ()  # lists without labels or masks (read with targets=False)

    def __init__(self, root: str | Path, class_names: Sequence[str], has_background: bool) -> None:
        self.given_root = Path(root).expanduser()
        self.class_names = list(class_names)
        self.has_background = has_background
        self._root: Path | None = None
        self._entries: dict[tuple[Any, ...], SplitEntries] = {}  # (list, targets, policy) or background lists

    def __getstate__(self) -> dict[str, Any]:  # workers need no memoised entries
        return {**self.__dict__, "_entries": {}}

    @property
    def root(self) -> Path:
        """The resolved root (raises a DatasetError naming what is missing)."""
        if self._root is None:
            self._root = self.resolve_root()
        return self._root

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- layout-specific
    @abstractmethod
    def resolve_root(self) -> Path:
        """The folder holding the layout, from the given root (which may be one level above)."""

    @abstractmethod
    def list_path(self, split: str) -> Path:
        """Where the list of ``split`` lives."""

    @abstractmethod
    def image_path(self, name: str) -> Path:
        """The image file of an entry."""

    @abstractmethod
    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        """Cheap checks of folders beyond the lists (no image is opened)."""

    @abstractmethod
    def annotation_problem(self, name: str) -> str | None:
        """A one-line problem when the annotation that labels an entry is missing, else None."""

    @abstractmethod
    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        """Image-level labels (sorted class indices) of entries, and a problem line for those that have none."""

    @abstractmethod
    def mask_file(self, name: str) -> Path | None:
        """The label-map file read for an entry (after :meth:`prepare`), or None when it has none."""

    @abstractmethod
    def decode_mask(self, path: Path) -> np.ndarray:
        """A label-map file -> (H, W) uint8 in the training label space."""

    def mask_header_file(self, name: str) -> Path | None:
        """The label-map file whose header the check before training reads (None: no mask, or not a PIL image)."""
        return self.mask_file(name)

    def mask_header_problem(self, path: Path, mode: str) -> str | None:
        """A problem that a label map's header shows (e.g. a colour mode), else None; nothing by default."""
        return None

    def read_label_map(self, path: Path) -> np.ndarray:
        """:meth:`decode_mask`, then a DatasetError naming the file if a value is no label of this dataset."""
        mask = self.decode_mask(path)
        num_labels = self.num_classes + int(self.has_background)
        bad = (mask >= num_labels) & (mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(int(v) for v in np.unique(mask[bad]))[:5]
            raise DatasetError(
                f"mask {path} holds value(s) {values}, but {self.name} has labels 0..{num_labels - 1} and "
                f"{IGNORE_INDEX} (ignore); fix that mask or the dataset's class_names"
            )
        return mask

    def require_masks(self, split: str, names: Sequence[str]) -> None:
        """A DatasetError when an entry of ``split`` has no label map (validation and evaluation need them all)."""
        missing = [n for n in names if self.mask_file(n) is None]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(names)} images of '{split}' have no ground-truth mask (e.g. {missing[0]}); "
                "validate and evaluate on a list with masks (e.g. val), or add the missing masks"
            )

    def list_hint(self, split: str) -> str:
        """What to say when a list file is missing."""
        return f" (set dataset.train_list / dataset.val_list to a list in {self.list_path(split).parent} or a path)"

    def prepare(  # noqa: B027
        self, splits: Sequence[str], workers: int = 0, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """One-time work for the lists ``splits`` (e.g. converting annotations into a cache); nothing by default.

        Reading works without it (the work then happens when a list is first resolved); ``progress(done, total)``
        is called as it goes.
        """

    # ---- shared
    def read_list(self, split: str) -> list[str]:
        """The image ids of a list."""
        return read_list_file(self.list_path(split), self.list_hint(split))

    def check(self, splits: Sequence[str], masks_required: Sequence[str] = (), targets: bool = True) -> Path:
        """Cheap validation: the root, the layout and every list (no image is opened). Returns the root."""
        root = self.root
        self.check_layout(splits, masks_required, targets)
        for split in splits:
            self.read_list(split)
        return root

    def entries(self, split: str, targets: bool = True, on_bad_sample: str = "error") -> SplitEntries:
        """Resolve a list: every entry's files exist and open, (with ``targets``) its labels are valid and its mask
        has its image's size.

        One ``stat`` per file, the label source (cached) and one header read per file (:meth:`header_problems`).
        Problems raise or are skipped per ``on_bad_sample``.
        """
        key = (split, targets, on_bad_sample if on_bad_sample == "report" else check_policy(on_bad_sample))
        if key in self._entries:
            return self._entries[key]
        list_path = self.list_path(split)
        listed = self.read_list(split)
        problems = self.file_problems(listed, targets, list_path)
        names = [n for n in listed if n not in problems]
        found: dict[str, list[int]] = {}
        if targets:
            found, label_problems = self.checked_labels(names)
            problems.update(label_problems)
            names = [n for n in names if n not in label_problems]
        header = self.header_problems(names, targets)
        problems.update(header)
        names = [n for n in names if n not in header]
        problems = {n: problems[n] for n in listed if n in problems}  # in list order
        resolve_problems(split, problems, on_bad_sample)
        if not names:
            raise DatasetError(f"no usable entry left in list {list_path}; see the warnings above")
        labels = [found[n] for n in names] if targets else None
        self._entries[key] = SplitEntries(split, names, labels, problems)
        return self._entries[key]

    def background_entries(self, split: str, on_bad_sample: str = "error") -> SplitEntries:
        """Resolve a list of background-only images (none of the classes in them): their images exist and open;
        no annotation or mask is needed (their image label is empty). Problems raise or are skipped as in
        :meth:`entries`."""
        if not self.has_background:
            raise DatasetError(
                f"dataset.background_list={split} needs a background class; {self.name} has none: leave it null"
            )
        key = ("background", split, on_bad_sample if on_bad_sample == "report" else check_policy(on_bad_sample))
        if key in self._entries:
            return self._entries[key]
        list_path = self.list_path(split)
        listed = self.read_list(split)
        problems = self.file_problems(listed, False, list_path)
        names = [n for n in listed if n not in problems]
        header = self.header_problems(names, targets=False)
        problems.update(header)
        names = [n for n in names if n not in header]
        problems = {n: problems[n] for n in listed if n in problems}
        resolve_problems(split, problems, on_bad_sample)
        if not names:
            raise DatasetError(f"no usable entry left in background list {list_path}; see the warnings above")
        self._entries[key] = SplitEntries(split, names, [[] for _ in names], problems)
        return self._entries[key]

    def file_problems(self, names: Sequence[str], targets: bool, list_path: Path) -> dict[str, str]:
        """A problem line per entry whose image (or, with ``targets``, annotation) file is missing."""
        problems: dict[str, str] = {}
        for name in names:
            image = self.image_path(name)
            if not image.is_file():
                problems[name] = f"image {image} is missing (listed in {list_path}); {self.download_hint}"
            elif targets and (problem := self.annotation_problem(name)) is not None:
                problems[name] = f"{problem} (listed in {list_path})"
        return problems

    def checked_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        """:meth:`load_labels`; without a background class an image also needs a class to learn from."""
        found, problems = self.load_labels(names)
        if not self.has_background:
            for name in names:
                if name in found and not found[name]:
                    problems[name] = f"{name} has no labelled pixel of any class; nothing to learn from"
        return found, problems

    def header_problems(self, names: Sequence[str], targets: bool = True) -> dict[str, str]:
        """A problem line per entry whose files' headers show it unusable (:meth:`header_problem`); headers
        only (PIL reads no pixel), a thread pool when the disk is cold (:func:`map_headers`)."""
        results = map_headers(lambda n: self.header_problem(n, targets), list(names))
        return {n: r for n, r in zip(names, results, strict=True) if r is not None}

    def header_problem(self, name: str, targets: bool = True) -> str | None:
        """The problem of an entry from its files' headers: an image or mask that does not open, a mask of
        another size than its image or one :meth:`mask_header_problem` refuses; None when it looks fine."""
        try:
            size, _ = read_header(self.image_path(name))
            path = self.mask_header_file(name) if targets else None
            if path is None:
                return None
            mask_size, mode = read_header(path, "mask")
        except DatasetError as err:
            return str(err)
        if mask_size != size:
            return size_mismatch(path, mask_size, size)
        return self.mask_header_problem(path, mode)

    def read_sample(
        self, name: str, targets: bool = True, background_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, 3) uint8 image and (H, W) uint8 label map (all 255 when the entry has none, all 0 for a
        ``background_only`` image without one; None without ``targets``); a mask of another size than its image
        raises a DatasetError naming it."""
        image = read_image(self.image_path(name))
        if not targets:
            return image, None
        path = self.mask_file(name)
        if path is None:
            return image, np.full(image.shape[:2], 0 if background_only else IGNORE_INDEX, dtype=np.uint8)
        mask = self.read_label_map(path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(size_mismatch(path, (mask.shape[1], mask.shape[0]), (image.shape[1], image.shape[0])))
        return image, mask


@dataclass(frozen=True)
class BadSample:
    """What ``__getitem__`` returns for a sample that ``on_bad_sample=skip`` skips."""

    index: int
    name: str
    message: str


class ReaderView:
    """The root, classes and background flag of the ``reader`` an object holds (datasets, the DataModule)."""

    reader: SegmentationReader

    @property
    def root(self) -> Path:
        return self.reader.root

    @property
    def class_names(self) -> list[str]:
        return list(self.reader.class_names)

    @property
    def num_classes(self) -> int:
        return self.reader.num_classes

    @property
    def has_background(self) -> bool:
        return self.reader.has_background


class SegmentationDataset(ReaderView, Dataset):
    """Transformed samples of one list of any reader.

    ``__getitem__`` returns a dict: ``image`` (3, h, w) float32 (normalised), ``valid`` (h, w) bool (False on
    added padding), ``size`` (2,) int64 original (H, W), ``name`` (str), ``index`` (int) and, with ``targets``,
    ``mask`` (h, w) int64 (255 = ignore; all 255 for an image without a label map) and ``labels`` (C,) float32
    multi-hot. Without ``targets`` (e.g. exporting pseudo masks of VOC ``test``) no label or mask is read.
    With ``on_bad_sample="skip"`` an unreadable sample gives a :class:`BadSample` instead (see the module doc).
    """

    def __init__(
        self,
        reader: SegmentationReader,
        split: str,
        transform: Callable[..., Any] | None = None,
        targets: bool = True,
        on_bad_sample: str = "error",
        background_split: str | None = None,
    ) -> None:
        self.reader = reader
        self.split = split
        self.transform = transform
        self.targets = targets
        self.on_bad_sample = check_policy(on_bad_sample)
        entries = reader.entries(split, targets, on_bad_sample)
        self.names = list(entries.names)
        self.image_labels = entries.labels
        self.skipped = dict(entries.skipped)
        self.background_only: frozenset[str] = frozenset()
        if background_split is not None:
            extra = reader.background_entries(background_split, on_bad_sample)
            both = sorted(set(extra.names) & set(self.names))
            if both:
                raise DatasetError(
                    f"{len(both)} image(s) of background list {background_split} are also in list {split} "
                    f"(e.g. {both[0]}): a background-only image has no class; remove it from one of the lists"
                )
            self.names += extra.names
            if self.image_labels is not None:
                self.image_labels = [*self.image_labels, *extra.labels]
            self.skipped.update(extra.skipped)
            self.background_only = frozenset(extra.names)

    def __len__(self) -> int:
        return len(self.names)

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask (None without targets) of one entry, untransformed."""
        name = self.names[index]
        return self.reader.read_sample(name, self.targets, name in self.background_only)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any] | BadSample:
        """The sample of an index or, from :class:`~.sampling.EpochSampler`, of an ``(index, seed)`` pair: its
        augmentation is then a function of ``seed`` alone (not of the process's random stream)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_transform(self.transform, seed)
        try:
            image, mask = self.read_sample(index)
        except DatasetError as err:
            if self.on_bad_sample == "error":
                raise
            warnings.warn(f"skipping bad sample: {err}", DatasetWarning, 2)
            return BadSample(index, self.names[index], str(err))
        size = torch.tensor(image.shape[:2], dtype=torch.int64)
        carried = mask if mask is not None else np.zeros(image.shape[:2], dtype=np.uint8)
        image_t, mask_t, valid = apply_transform(self.transform, image, carried)
        sample: dict[str, Any] = {"image": image_t, "valid": valid, "size": size}
        if self.targets:
            assert self.image_labels is not None
            labels = torch.zeros(self.num_classes, dtype=torch.float32)
            labels[self.image_labels[index]] = 1.0
            sample.update(mask=mask_t, labels=labels)
        sample.update(name=self.names[index], index=index)
        return sample


class SkipBadCollate:
    """Collate samples, dropping :class:`BadSample` markers; their names go to ``batch["skipped"]``.

    A batch whose samples are all bad takes the next good samples of the dataset (in index order), so no
    batch is ever empty; a dataset without a single good sample raises.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        bad = [s for s in samples if isinstance(s, BadSample)]
        good = [s for s in samples if not isinstance(s, BadSample)]
        if not good:
            n = len(self.dataset)  # type: ignore[arg-type]
            start = bad[-1].index if bad else 0
            for step in range(1, n + 1):
                sample = self.dataset[(start + step) % n]
                if not isinstance(sample, BadSample):
                    good.append(sample)
                    break
            else:
                raise DatasetError(f"every sample of the dataset is bad, e.g. {bad[0].message}")
        batch = default_collate(good)
        batch["skipped"] = [b.name for b in bad]
        return batch
