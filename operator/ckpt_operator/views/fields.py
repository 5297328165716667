"""Total accessors for raw bodies: a value of the wrong type reads as absent, never raises.

Admission validates our resources, but a body can still be hostile: stored before a schema
was tightened, written around it, or a core object whose annotations are free text. An
exception in a Kopf index function or handler is retried over and over, so every parse in
``views`` reads fields through these and decides what a missing value means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_EMPTY: Mapping[str, Any] = {}


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is an object, else an empty one."""
    return value if isinstance(value, Mapping) else _EMPTY


def objects(value: Any) -> list[Mapping[str, Any]]:
    """The objects in a list; anything else in it, or a non-list, is skipped."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def text(value: Any, default: str = "") -> str:
    """``value`` if it is a string, else ``default``."""
    return value if isinstance(value, str) else default


def optional_text(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def integer(value: Any) -> int | None:
    """An integer (a whole float counts, booleans do not), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def number(value: Any) -> float | None:
    """A finite number (booleans excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def string_map(value: Any) -> dict[str, str]:
    """The string-to-string entries of an object (labels, annotations)."""
    return {k: v for k, v in mapping(value).items() if isinstance(k, str) and isinstance(v, str)}


def decimal(value: Any, maximum: int) -> int | None:
    """A non-negative integer written in ASCII digits only, at most ``maximum``, else None.

    Stricter than ``int()``, which also takes ``+5``, ``" 5"``, ``1_000`` and non-ASCII digits.
    """
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return None
    if len(value) > len(str(maximum)):
        return None
    parsed = int(value)
    return parsed if parsed <= maximum else None
