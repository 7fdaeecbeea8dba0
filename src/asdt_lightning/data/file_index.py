"""The JSON indexes that cache per-file results: a file's version key, and versioned load and save."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text


def file_key(path: Path) -> list[int] | None:
    """(mtime_ns, size) of a file, None when it does not exist: a cached result is reused while this is equal."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def load_index(path: Path, version: int) -> dict[str, Any]:
    """The entries of an index written by :func:`save_index` with ``version``; {} if missing, unreadable or older."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("version") == version:
            return dict(data["entries"])
    return {}


def save_index(path: Path, version: int, entries: dict[str, Any]) -> None:
    """Write ``{"version": version, "entries": entries}`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps({"version": version, "entries": entries}))
