"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """Where generated data and caches go: ``$ASDT_CACHE`` or ``~/.cache/asdt_lightning``."""
    return Path(os.environ.get("ASDT_CACHE", Path.home() / ".cache" / "asdt_lightning")).expanduser()


def current_umask() -> int:
    """The process's file-creation mask: from ``/proc/self/status`` on Linux (no change to the process), else by
    setting it and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not ``mkstemp``'s 0600,
    so colleagues who may read the folder may read its files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6


def torch_file_head(path: str | Path) -> bytes:
    """The first 4 bytes of a file: ``ZIP_MAGIC`` for torch's format, a pickle (legacy torch) starts with 0x80."""
    with open(path, "rb") as f:
        return f.read(4)


def is_torch_file(path: str | Path) -> bool:
    """Whether the file starts like a PyTorch file (a zip archive or a legacy pickle); reads 4 bytes."""
    head = torch_file_head(path)
    return head == ZIP_MAGIC or head[:1] == b"\x80"


def unreadable_torch_file(path: str | Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, as what the file is not and what to do (no advice to
    load it unsafely)."""
    path = Path(path)
    head = torch_file_head(path)
    remedy = "re-download or re-copy it, or save one with torch.save(model.state_dict(), path)"
    if not head:
        return f"{path} is empty; {remedy}"
    if head == ZIP_MAGIC:
        if "weights only" in str(error).lower() or type(error).__name__ == "UnpicklingError":
            return (
                f"{path} holds pickled Python objects besides tensors (a whole saved model?), which are not loaded "
                "from files for safety; in code you trust, load it and save torch.save(model.state_dict(), path)"
            )
        return f"{path} is a zip archive but not a complete PyTorch file (truncated or corrupt); {remedy}"
    if head[:1] == b"\x80":  # a pickle: torch's legacy (pre-1.6) format
        if "weights only" in str(error).lower():
            return (
                f"{path} is a legacy pickle holding Python objects besides tensors, not loaded from files for "
                "safety; in code you trust, load it and save torch.save(model.state_dict(), path)"
            )
        return f"{path} is a pickle but not a readable PyTorch file (truncated or corrupt); {remedy}"
    return f"{path} is not a PyTorch file (neither a zip archive nor a pickle: corrupt or another format); {remedy}"


HYDRA_ONLY = frozenset({".hydra"})


def remove_empty_run_dir(path: str | Path, log_names: tuple[str, ...] = (".log",)) -> bool:
    """Remove a run folder that holds only what Hydra put there (``.hydra/`` and a log file), then its parent
    (e.g. ``outputs/<date>``) if that is left empty: a run that failed its checks leaves nothing behind.
    Returns whether the folder was removed."""
    import shutil

    path = Path(path)
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if any(e.name not in HYDRA_ONLY and not (e.is_file() and e.name.endswith(log_names)) for e in entries):
        return False
    shutil.rmtree(path)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only succeeds when empty
    return True
