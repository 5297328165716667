"""How ``kubectl ckpt`` prints: rich tables for people, ``-o json|yaml`` for programs."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any

import yaml
from rich.console import Console
from rich.filesize import decimal
from rich.table import Table

from ckpt_operator.api.conditions import parse_time

out = Console(markup=False, highlight=False)  # names and messages are data, not markup
err = Console(stderr=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, output: Format) -> bool:
    """Print ``data`` as JSON or YAML when asked; False means: print the table instead."""
    if output is Format.json:
        print(json.dumps(data, indent=2))
    elif output is Format.yaml:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return output is not Format.table


def size(value: int | None) -> str:
    """Bytes for people, in SI units as ``du --si`` (1.5 GB)."""
    return "-" if value is None else decimal(value)


def age(stamp: str | None, now: datetime) -> str:
    """Age as kubectl prints it: 45s, 12m, 3h, 2d."""
    when = parse_time(stamp)
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def table(*columns: str) -> Table:
    return Table(*columns, box=None, header_style="bold", pad_edge=False)


def fields(pairs: list[tuple[str, Any]]) -> None:
    """``Key:  value`` lines, as kubectl describe prints them."""
    width = max(len(key) for key, _ in pairs) + 2
    for key, value in pairs:
        out.print(
            f"{key + ':':<{width}}{'-' if value in (None, '', []) else value}", soft_wrap=True
        )
