"""Plain (config) dicts -> frozen parameter dataclasses: the one conversion, with one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ASDTUserError

P = TypeVar("P")


def params_from(base: type[P] | P, values: Mapping[str, Any] | None, where: str = "") -> P:
    """``base`` (a dataclass or an instance: the defaults) overridden by a plain, possibly nested, dict.

    Unknown keys and values the dataclass refuses raise ``ASDTUserError`` naming ``where`` (the config path,
    e.g. ``model.teacher_a``) or, without it, the class.
    """
    base_obj: Any = base() if isinstance(base, type) else base
    values = dict(values or {})
    name = where or type(base_obj).__name__
    known = {f.name for f in dataclasses.fields(base_obj)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ASDTUserError(f"unknown option(s) {unknown} for {name}; known: {sorted(known)}")
    for key, value in values.items():
        current = getattr(base_obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            values[key] = params_from(current, value, f"{where}.{key}" if where else "")
    try:
        return dataclasses.replace(base_obj, **values)
    except (TypeError, ValueError) as err:  # a params dataclass refusing a value
        raise ASDTUserError(f"{name}: {err}") from None
