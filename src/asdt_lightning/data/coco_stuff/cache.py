"""The conversion cache: each ``.mat`` converted once into a PNG of raw ids, with an index of the ids per map."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from ...io_utils import cache_dir, exclusive_lock
from ..file_index import file_key, load_index, save_index
from ..voc import read_mask, write_mask_png
from .annotations import check_raw_ids, read_mat_labels
from .ids import NUM_IDS

_INDEX_VERSION = 1
_FLUSH_EVERY = 200  # index entries written between flushes of a running conversion


def id_counts(labels: np.ndarray) -> dict[str, int]:
    """Pixels per raw id present (unlabeled excluded), as a JSON-ready ``{"id": count}``."""
    counts = np.bincount(labels.reshape(-1), minlength=NUM_IDS + 1)
    return {str(i): int(counts[i]) for i in np.flatnonzero(counts) if i != 0}


def convert_annotation(src: Path, dst: Path | None) -> dict[str, int] | str:
    """Index one annotation: a ``.mat`` is written to ``dst`` as a PNG of raw ids (atomically); a ``.png``
    (``dst`` None) is only read. Returns the id counts, or the problem line of a bad file."""
    try:
        if src.suffix == ".mat":
            labels = read_mat_labels(src)
            assert dst is not None
            write_mask_png(dst, labels)
        else:
            labels = check_raw_ids(read_mask(src), src)
    except DatasetError as err:
        return str(err)
    return id_counts(labels)


def _convert_task(task: tuple[Path, Path | None]) -> dict[str, int] | str:
    return convert_annotation(*task)


def default_label_cache(root: Path) -> Path:
    """``<cache>/coco_stuff/<hash of the resolved root>``."""
    return cache_dir() / "coco_stuff" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


class LabelCache:
    """The converted label maps of one root (``labels/<name>.png``, raw ids) and ``index.json``
    (per name: the source file's (mtime_ns, size) and the pixels per raw id)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.labels = folder / "labels"
        self.index_path = folder / "index.json"

    def png(self, name: str) -> Path:
        return self.labels / f"{name}.png"

    def load_index(self) -> dict[str, Any]:
        return load_index(self.index_path, _INDEX_VERSION)

    def save_index(self, entries: dict[str, Any]) -> None:
        save_index(self.index_path, _INDEX_VERSION, entries)

    def fresh(self, entry: Any, src: Path, key: list[int] | None, name: str) -> bool:
        """An index entry still describes ``src`` (and its PNG exists, for a ``.mat``)."""
        return entry is not None and entry[0] == key and (src.suffix != ".mat" or self.png(name).is_file())

    def update(
        self,
        sources: dict[str, Path],
        workers: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Convert/index every source not indexed yet; returns the id counts per name and the bad files.

        Resumable: the index is flushed every few hundred files and when interrupted (also by an exception),
        converted PNGs are written atomically, and temporary files of a killed run are removed first.
        """
        entries = self.load_index()
        keys = {n: file_key(p) for n, p in sources.items()}
        todo = [n for n, p in sources.items() if not self.fresh(entries.get(n), p, keys[n], n)]
        problems: dict[str, str] = {}
        if todo:
            with exclusive_lock(self.folder / ".lock"):
                entries = self.load_index()  # another process may have converted them meanwhile
                todo = [n for n in todo if not self.fresh(entries.get(n), sources[n], keys[n], n)]
                if self.labels.is_dir():
                    for stale in self.labels.glob(".*.tmp"):  # left by a killed run; we hold the lock
                        stale.unlink(missing_ok=True)
                problems = self._convert(todo, sources, keys, entries, workers, progress)
        counts = {n: entries[n][1] for n in sources if n not in problems and n in entries}
        return counts, problems

    def _convert(
        self,
        todo: list[str],
        sources: dict[str, Path],
        keys: dict[str, list[int] | None],
        entries: dict[str, Any],
        workers: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, str]:
        tasks = [(sources[n], self.png(n) if sources[n].suffix == ".mat" else None) for n in todo]
        problems: dict[str, str] = {}
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else None
        results = pool.map(_convert_task, tasks, chunksize=8) if pool else map(_convert_task, tasks)
        try:
            for done, (name, result) in enumerate(zip(todo, results, strict=True), 1):
                if isinstance(result, str):
                    problems[name] = result
                else:
                    entries[name] = [keys[name], result]
                if done % _FLUSH_EVERY == 0:
                    self.save_index(entries)
                if progress is not None:
                    progress(done, len(todo))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            self.save_index(entries)
        return problems
