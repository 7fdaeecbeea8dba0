"""The conversion cache of one split and source: PNG label maps written once, the label counts per image, and
the split index of the JSON (so a converted split never parses its JSON again).

Folder ``<label_cache>/<split><year>-<source>/``: ``labels/<name>.png`` (0..80, 255; VOC palette), ``index.json``
(per name: the version key of its source and its pixels per thing label) and ``images.json`` (the split index,
with the JSON's key). Resumable and safe to interrupt: PNGs are written atomically (temporary file, then
``os.replace``), the index is flushed every few hundred images and on the way out (also on Ctrl-C), temporary files
of a killed run are removed under the lock, and a restart converts only what the index does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ...io_utils import cache_dir, exclusive_lock
from ..file_index import load_index, save_index
from .convert import Task, run_task

_INDEX_VERSION = 1
_IMAGES_VERSION = 1
_FLUSH_EVERY = 200  # index entries written between flushes of a running conversion

Key = Any  # a JSON-ready version key of a name's source: file_key()s, compared with ==


def default_label_cache(root: Path, *settings: Any) -> Path:
    """``<cache>/coco/<hash of the resolved root and the folder settings>``."""
    text = "|".join([str(root.resolve()), *map(str, settings)])
    return cache_dir() / "coco" / hashlib.sha256(text.encode()).hexdigest()[:16]


class CocoLabelCache:
    """The converted label maps and indexes of one split and source (module doc)."""

    def __init__(self, folder: Path, writes_png: bool = True) -> None:
        self.folder = folder
        self.writes_png = writes_png  # False for the png source: user PNGs are indexed in place
        self.labels = folder / "labels"
        self.index_path = folder / "index.json"
        self.images_path = folder / "images.json"

    def png(self, name: str) -> Path:
        return self.labels / f"{name}.png"

    def load_images(self, key: Key) -> dict[str, list[Any]] | None:
        """The cached split index if it was built from the JSON version ``key``, else None."""
        data = load_index(self.images_path, _IMAGES_VERSION)
        return data.get("images") if data.get("key") == key else None

    def save_images(self, key: Key, images: dict[str, list[Any]]) -> None:
        save_index(self.images_path, _IMAGES_VERSION, {"key": key, "images": images})

    def fresh(self, entry: Any, key: Key, name: str) -> bool:
        """An index entry still describes the source version ``key`` (and its PNG exists, where one is written)."""
        return entry is not None and entry[0] == key and (not self.writes_png or self.png(name).is_file())

    def update(
        self,
        keys: dict[str, Key],
        tasks_for: Callable[[Sequence[str]], list[Task]],
        workers: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Convert every name of ``keys`` not indexed at its key (``tasks_for(names)``: one task per name, built
        only when there is work, e.g. after parsing the JSON); returns the label counts per name and the problem
        line of each bad one."""
        entries = load_index(self.index_path, _INDEX_VERSION)
        todo = [n for n, k in keys.items() if not self.fresh(entries.get(n), k, n)]
        problems: dict[str, str] = {}
        if todo:
            with exclusive_lock(self.folder / ".lock"):
                entries = load_index(self.index_path, _INDEX_VERSION)  # another process may have converted them
                todo = [n for n in todo if not self.fresh(entries.get(n), keys[n], n)]
                if self.labels.is_dir():
                    for stale in self.labels.glob(".*.tmp"):  # left by a killed run; we hold the lock
                        stale.unlink(missing_ok=True)
                if todo:
                    problems = self._convert(todo, tasks_for(todo), keys, entries, workers, progress)
        counts = {n: entries[n][1] for n in keys if n not in problems and n in entries}
        return counts, problems

    def _convert(
        self,
        todo: list[str],
        tasks: list[Task],
        keys: dict[str, Key],
        entries: dict[str, Any],
        workers: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, str]:
        problems: dict[str, str] = {}
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else None
        results = pool.map(run_task, tasks, chunksize=8) if pool else map(run_task, tasks)
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

    def save_index(self, entries: dict[str, Any]) -> None:
        save_index(self.index_path, _INDEX_VERSION, entries)
