"""Pieces every handler module shares."""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator.api import conditions, names


def resource(plural: str) -> tuple[str, str, str]:
    """Positional arguments selecting one of our custom resources in a Kopf decorator."""
    return (names.GROUP, names.VERSION, plural)


def initial_status(
    status: kopf.Status,
    generation: int | None,
    phase: str,
    condition: str,
    reason: str,
    message: str,
) -> dict[str, Any] | None:
    """The first status of an object we have not seen before, or None when it has one."""
    if status.get("phase"):
        return None
    return {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions.set_condition(
            status.get("conditions"), condition, "Unknown", reason, message, generation
        ),
    }
