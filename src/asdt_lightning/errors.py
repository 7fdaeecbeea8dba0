"""User-facing errors: raised before expensive work starts, printed as one line by the entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ASDTUserError(ValueError):
    """A bad configuration or input that the user can fix; the message says what and how."""


class DatasetError(ASDTUserError):
    """A dataset root, list or sample that is missing or malformed."""


def run_or_exit(work: Callable[..., T], *args: Any) -> T:
    """Run an entry point's work; an ``ASDTUserError`` becomes one line ``error: ...`` on stderr and exit code 2."""
    try:
        return work(*args)
    except ASDTUserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
