"""Atomic file writes (a crash never leaves a half-written file under the final name), the cache folder and
an exclusive file lock."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """Where generated data and caches go: ``$ASDT_CACHE`` or ``~/.cache/asdt_lightning``."""
    return Path(os.environ.get("ASDT_CACHE", Path.home() / ".cache" / "asdt_lightning")).expanduser()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX), so concurrent converters (DDP ranks) take turns."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks here: atomic writes still keep every file whole
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
    """Why ``torch.load(path, weights_only=True)`` failed, in one line: what the file is not and what to run.

    A file holding Python objects besides tensors gets the re-save recipe: allow the classes it names
    (``torch.serialization.safe_globals``, which keeps every other class out) and save a plain state dict. Only a
    whole model pickled by torch < 1.6, which nothing else reads, gets the full unsafe load, and that only for a
    file the user trusts.
    """
    path = Path(path)
    head = torch_file_head(path)
    remedy = "re-download or re-copy it, or save one with torch.save(model.state_dict(), path)"
    if not head:
        return f"{path} is empty; {remedy}"
    refused = "weights only" in str(error).lower() or type(error).__name__ == "UnpicklingError"
    if head == ZIP_MAGIC:
        if refused:
            names, complete = _refused_globals(path, error)
            return (
                f"{path} holds pickled Python objects besides tensors ({_listed(names, complete)}: a whole "
                f"saved model?), which are not loaded from files for safety; "
                f"{_resave_recipe(path, names, complete)}"
            )
        return f"{path} is a zip archive but not a complete PyTorch file (truncated or corrupt); {remedy}"
    if head[:1] == b"\x80":  # a pickle: torch's legacy (pre-1.6) format
        if refused:
            names, complete = _refused_globals(path, error)
            return (
                f"{path} is a legacy (torch < 1.6) pickle holding Python objects besides tensors "
                f"({_listed(names, complete)}), not loaded from files for safety; "
                f"{_resave_recipe(path, names, complete, legacy=True)}"
            )
        return f"{path} is a pickle but not a readable PyTorch file (truncated or corrupt); {remedy}"
    return f"{path} is not a PyTorch file (neither a zip archive nor a pickle: corrupt or another format); {remedy}"


def _refused_globals(path: Path, error: BaseException) -> tuple[list[str], bool]:
    """The classes (``module.Name``) a refused torch file pickles, and whether that is all of them: every one
    from the file's pickle, read without running it (zip format), else the first one, which torch's error names."""
    try:
        import torch.serialization

        names = [str(n) for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    except Exception:  # a legacy file, or a torch without it
        names = []
    if names:
        return names, True
    return re.findall(r"GLOBAL ([\w.]+)", str(error))[:1], False


def _listed(names: list[str], complete: bool) -> str:
    """The refused classes for the message: up to four, or the one torch named."""
    if not names:
        return "classes torch does not allow"
    if not complete:
        return f"e.g. {names[0]}"
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _resave_recipe(path: Path, names: list[str], complete: bool, legacy: bool = False) -> str:
    """What to run on a trusted file to get a state dict ``backbone.weights`` takes (``<stem>.state_dict.pth``)."""
    out = path.with_name(f"{path.stem}.state_dict.pth")
    if not names:
        allowed = "the classes torch names"
    elif len(names) > 6:
        allowed = f"the {len(names)} classes torch.serialization.get_unsafe_globals_in_checkpoint('{path}') lists"
    else:
        allowed = ", ".join(names)
    more = "" if complete else " (adding any further class torch then names)"
    recipe = (
        f"if you trust the file, re-save it as a state dict in Python where those classes import: "
        f"with torch.serialization.safe_globals([{allowed}]): obj = torch.load('{path}'){more}; "
        f"then torch.save(obj.state_dict(), '{out}') (or the state dict it holds) and use {out}"
    )
    if legacy:  # torch keeps whole nn.Modules of this format out of even the allowed load
        recipe += f"; a whole model of this format loads only with torch.load('{path}', weights_only=False)"
    return recipe


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
