"""The COCO reader and dataset: lists of a split, image labels from the cached label counts (or the JSON), masks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from ..dataset import SegmentationDataset, SegmentationReader, list_file_path, read_list_file
from ..file_index import file_key
from ..voc import mask_mode_problem, read_mask
from .annotations import Record, load_instances, load_panoptic, split_index
from .cache import CocoLabelCache, default_label_cache
from .convert import Task
from .ids import COCO_CLASSES, COCO_URL, NUM_THINGS, check_settings
from .layout import CocoLayout, default_split, layout_help, list_file_split, name_split, resolve_coco_root
from .rasterize import png_labels


class CocoReader(SegmentationReader):
    """COCO 2014 or 2017, 80 thing classes plus background (81 labels), from the instances JSON, the panoptic
    JSON and PNGs, or PNG masks (``source``; see the package doc). Image labels: the classes with at least
    ``min_label_pixels`` pixels in the mask (``label_source=mask``), or the non-crowd things of the JSON."""

    name = "coco"
    download_hint = f"re-extract the images ({COCO_URL}) or fix the list"

    def __init__(
        self,
        root: str | Path,
        year: int = 2014,
        source: str = "auto",
        class_names: Sequence[str] | None = None,
        image_dir: str | None = None,
        annotation_dir: str | None = None,
        mask_dir: str | None = None,
        label_cache: str | Path | None = None,
        min_label_pixels: int = 1,
        label_source: str = "mask",
        png_ids: str = "contiguous",
        workers: int = 0,
    ) -> None:
        check_settings(year, source, png_ids, label_source, min_label_pixels)
        if class_names is not None and len(class_names) != NUM_THINGS:
            raise DatasetError(f"dataset.class_names has {len(class_names)} names; COCO has {NUM_THINGS} thing classes")
        super().__init__(root, class_names or COCO_CLASSES, has_background=True)
        self.year, self.source_setting = year, source
        self.dirs = (image_dir, annotation_dir, mask_dir)
        self.min_label_pixels, self.label_source, self.png_ids = min_label_pixels, label_source, png_ids
        self.workers = workers
        self._label_cache = Path(label_cache).expanduser() if label_cache else None
        self._layout: CocoLayout | None = None
        self._split_of: dict[str, str] = {}  # image name -> COCO split (train / val), filled as lists are read
        self._sources: dict[str, str] = {}  # COCO split -> its resolved source
        self._index: dict[str, dict[str, list[Any]]] = {}  # COCO split -> split index
        self._records: dict[str, dict[str, Record]] = {}  # COCO split -> parsed JSON records (large)

    def __getstate__(self) -> dict[str, Any]:  # workers need no parsed JSON
        return {**super().__getstate__(), "_index": {}, "_records": {}}

    # ---- layout
    def resolve_root(self) -> Path:
        return resolve_coco_root(self.given_root, self.year)

    @property
    def layout(self) -> CocoLayout:
        if self._layout is None:
            self._layout = CocoLayout(self.root, self.year, *self.dirs)
        return self._layout

    def source(self, split: str) -> str:
        """The annotation source of a COCO split (``dataset.source``, ``auto`` resolved)."""
        if split not in self._sources:
            self._sources[split] = self.layout.resolve_source(self.source_setting, split)
        return self._sources[split]

    @property
    def cache_root(self) -> Path:
        return self._label_cache or default_label_cache(self.root, self.layout.annotations().resolve(), self.dirs[2])

    def cache(self, split: str) -> CocoLabelCache:
        """The conversion cache of a COCO split's source."""
        source = self.source(split)
        tag = f"{split}{self.year}-{source}" + (f"-{self.png_ids}" if source == "png" else "")
        return CocoLabelCache(self.cache_root / tag, writes_png=source != "png")

    def coco_split(self, name: str) -> str:
        """The COCO split of an entry of a list read before (or of a 2014 file name)."""
        split = self._split_of.get(name) or name_split(name)
        if split is None:
            raise DatasetError(f"{name} is in no COCO list read so far; read its list first")
        return split

    def image_path(self, name: str) -> Path:
        return self.layout.images(self.coco_split(name)) / f"{name}.jpg"

    def source_file(self, name: str) -> Path:
        """The file an entry's mask comes from: its PNG mask, its panoptic PNG, or the instances JSON."""
        split = self.coco_split(name)
        source = self.source(split)
        if source == "png":
            return self.layout.masks(split) / f"{name}.png"
        if source == "panoptic":
            return self.layout.panoptic_pngs(split) / f"{name}.png"
        return self.layout.instances_json(split)

    # ---- lists
    def list_path(self, split: str) -> Path:
        """A list file (``<root>/<name>.txt`` or a path); for a whole split (``train``, ``val``), its source."""
        default = default_split(split, self.year)
        if default is not None:
            return self.layout.source_path(self.source(default), default)
        return list_file_path(self.root, split)

    def list_hint(self, split: str) -> str:
        return (
            " (dataset.train_list=train / val_list=val list every image of the split with annotations; a list file "
            "holds one image name per line, named train*.txt or val*.txt unless its names are COCO 2014 file names)"
        )

    def read_list(self, split: str) -> list[str]:
        default = default_split(split, self.year)
        if default is not None:
            names = self.split_names(default)
            self._split_of.update(dict.fromkeys(names, default))
            return names
        path = self.list_path(split)
        names = read_list_file(path, self.list_hint(split))
        self._split_of.update(self.list_splits(path, names))
        return names

    def list_splits(self, path: Path, names: Sequence[str]) -> dict[str, str]:
        """The COCO split of each name of a list file: a 2014 name's own, else the file's (``train*.txt``)."""
        fallback = list_file_split(path)
        out: dict[str, str] = {}
        for name in names:
            split = name_split(name) or fallback
            if split is None:
                raise DatasetError(
                    f"cannot tell which COCO split {name} (in {path}) is of: name the list file train*.txt or val*.txt"
                )
            out[name] = split
        return out

    def split_names(self, split: str) -> list[str]:
        """Every image of a COCO split with a thing annotation (crowd included; 82,081 train / 40,137 val images
        of 2014), or with a PNG mask (png source)."""
        if self.source(split) == "png":
            names = sorted(p.stem for p in self.layout.masks(split).glob("*.png"))
            where = self.layout.masks(split)
        else:
            names = sorted(n for n, entry in self.split_index(split).items() if entry[2] > 0)
            where = self.layout.json_path(self.source(split), split)
        if not names:
            raise DatasetError(f"{where} holds no annotated image of {split}{self.year}; {layout_help(self.year)}")
        return names

    def _by_split(self, names: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(self.coco_split(name), []).append(name)
        return groups

    # ---- checks
    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        """The image folder and the annotation source of every COCO split the lists use (no JSON is parsed)."""
        for split in splits:
            default = default_split(split, self.year)
            if default is not None:
                used = {default}
            else:
                path = self.list_path(split)
                used = set(self.list_splits(path, read_list_file(path, self.list_hint(split))).values())
            for coco_split in sorted(used):
                self.layout.check_images(coco_split)
                if targets or default is not None or split in masks_required:
                    self.source(coco_split)

    def annotation_problem(self, name: str) -> str | None:
        """A missing PNG mask or panoptic PNG (an image missing from the JSON is reported by load_labels)."""
        path = self.source_file(name)
        if path.suffix == ".png" and not path.is_file():
            kind = "panoptic PNG" if self.source(self.coco_split(name)) == "panoptic" else "mask"
            return f"{kind} {path} is missing ({COCO_URL})"
        return None

    # ---- JSON and cache
    def records(self, split: str) -> dict[str, Record]:
        """The parsed JSON of a COCO split (once per process; converting needs it, reading a cached split not)."""
        if split not in self._records:
            source = self.source(split)
            load = load_instances if source == "instances" else load_panoptic
            self._records[split] = load(self.layout.json_path(source, split))[0]
        return self._records[split]

    def split_index(self, split: str) -> dict[str, list[Any]]:
        """Per image ``[H, W, thing annotations, JSON labels]`` of a JSON split, cached beside its masks."""
        if split not in self._index:
            path = self.layout.json_path(self.source(split), split)
            key, cache = file_key(path), self.cache(split)
            images = cache.load_images(key)
            if images is None:
                images = split_index(self.records(split))
                with contextlib.suppress(OSError):  # a read-only cache only costs the parse next time
                    cache.save_images(key, images)
            self._index[split] = images
        return self._index[split]

    def label_counts(
        self,
        split: str,
        names: Sequence[str],
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Pixels per thing label of each entry's mask (converting what is not cached yet), and the bad ones."""
        source, cache = self.source(split), self.cache(split)
        problems: dict[str, str] = {}
        if source == "png":
            paths = {n: self.layout.masks(split) / f"{n}.png" for n in names}
            keys = {n: k for n, p in paths.items() if (k := file_key(p)) is not None}
            problems = {n: f"mask {p} is missing" for n, p in paths.items() if n not in keys}

            def tasks_for(todo: Sequence[str]) -> list[Task]:
                return [("png", paths[n], self.png_ids) for n in todo]

        else:
            json_path = self.layout.json_path(source, split)
            index, json_key = self.split_index(split), file_key(json_path)
            problems = {n: f"{n} is not an image of {json_path}" for n in names if n not in index}
            pngs = self.layout.panoptic_pngs(split)
            keys = {
                n: json_key if source == "instances" else [json_key, file_key(pngs / f"{n}.png")]
                for n in names
                if n in index
            }

            def tasks_for(todo: Sequence[str]) -> list[Task]:
                records = self.records(split)
                if source == "instances":
                    return [("instances", records[n], cache.png(n), json_path) for n in todo]
                return [("panoptic", records[n], pngs, cache.png(n)) for n in todo]

        counts, bad = cache.update(keys, tasks_for, self.workers if workers is None else workers, progress)
        return counts, {**problems, **bad}

    # ---- the reader interface
    def prepare(
        self, splits: Sequence[str], workers: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> None:
        names = list(dict.fromkeys(n for split in splits for n in self.read_list(split)))
        for split, group in self._by_split(names).items():
            self.label_counts(split, group, workers, progress)

    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        labels: dict[str, list[int]] = {}
        problems: dict[str, str] = {}
        for split, group in self._by_split(names).items():
            counts, bad = self.label_counts(split, group)
            problems.update(bad)
            index = self.split_index(split) if self.label_source == "annotations" else None
            for name, found in counts.items():
                if index is not None:
                    labels[name] = list(index[name][3])
                else:
                    labels[name] = sorted(int(k) - 1 for k, n in found.items() if n >= self.min_label_pixels)
        return labels, problems

    def mask_file(self, name: str) -> Path | None:
        split = self.coco_split(name)
        if self.source(split) == "png":
            path = self.source_file(name)
            return path if path.is_file() else None
        png = self.cache(split).png(name)
        if not png.is_file():  # not converted (yet): convert this one now
            self.label_counts(split, [name])
        return png if png.is_file() else None

    def decode_mask(self, path: Path) -> np.ndarray:
        raw = read_mask(path)
        if self.cache_root in path.parents:  # converted here: checked once
            return raw
        return png_labels(raw, path, self.png_ids)

    def mask_header_problem(self, path: Path, mode: str) -> str | None:
        return mask_mode_problem(path, mode)


class CocoSegmentation(SegmentationDataset):
    """:class:`SegmentationDataset` of one list of a COCO root (see there for the sample contract); ``kwargs``
    are :class:`CocoReader`'s."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        year: int = 2014,
        source: str = "auto",
        transform: Callable[..., Any] | None = None,
        targets: bool = True,
        on_bad_sample: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(CocoReader(root, year, source, **kwargs), split, transform, targets, on_bad_sample)
