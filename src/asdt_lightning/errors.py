"""User-facing errors: raised before expensive work starts, printed as one line by the entry points."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# How torch re-raises an exception of a DataLoader worker (``ExceptionWrapper.reraise``): the type called with
# "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...", ending in "<module>.<Type>: <message>".
_WORKER_RERAISE = re.compile(r"Caught (\w+) in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


def worker_message(error_type: type[BaseException], text: str) -> str | None:
    """The original message inside torch's re-raise text of a worker's ``error_type``, or None for plain text."""
    match = _WORKER_RERAISE.match(text)
    if match is None or match.group(1) != error_type.__name__:
        return None
    head = f"{error_type.__module__}.{error_type.__qualname__}: "
    lines = text.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(head)]
    if not starts:
        return None
    return "\n".join(lines[starts[-1] :])[len(head) :]


class ASDTUserError(ValueError):
    """A bad configuration or input that the user can fix; the message says what and how.

    Raised in a DataLoader worker, torch re-raises it in the main process with the worker's whole traceback as
    its message; the constructor keeps the original message (the traceback stays in ``worker_traceback``), so
    the error reads the same wherever it was raised.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        original = worker_message(type(self), text)
        self.worker_traceback = text if original is not None else None
        super().__init__(text if original is None else original)


def with_config_path(err: Exception, path: str, names: Iterable[str] | None = None) -> Exception:
    """A pure layer's error, whose message starts with its argument's name, as the command line's:
    ``with_config_path(e, "pwm")``: "period must ..." -> "pwm.period must ...". With ``names``, only a message
    starting with one of them is prefixed (others come back unchanged)."""
    first = str(err).split(" ", 1)[0]
    if names is not None and first not in set(names):
        return err
    return ASDTUserError(f"{path}.{err}")


class DatasetError(ASDTUserError):
    """A dataset root, list or sample that is missing or malformed."""


def run_or_exit(work: Callable[..., T], *args: Any) -> T:
    """Run an entry point's work; an ``ASDTUserError`` becomes one line ``error: ...`` on stderr and exit code 2."""
    try:
        return work(*args)
    except ASDTUserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
