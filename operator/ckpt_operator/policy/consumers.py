"""Which pods consume a run's checkpoints, and which of them still hold a checkpoint back.

A consumer blocks the deletion of every checkpoint at or past the step it has loaded until it
reports a later one; one silent past ``reportTimeoutSeconds`` stops blocking (and is flagged),
and one that has finished loads nothing any more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.views.pod import ConsumerView


def default_selector(run: str) -> dict[str, Any]:
    return {"matchLabels": {names.LABEL_CONSUMER_OF: run}}


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches every pod."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def consumers_of(
    run: str, selector: Mapping[str, Any] | None, pods: Iterable[ConsumerView]
) -> list[ConsumerView]:
    chosen = selector if selector else default_selector(run)
    return [p for p in pods if selector_matches(chosen, p.labels)]


def is_silent(consumer: ConsumerView, now: datetime, timeout_s: float) -> bool:
    return (now - consumer.last_report).total_seconds() > timeout_s


def blocking_consumers(
    step: int, consumers: Iterable[ConsumerView], now: datetime, timeout_s: float
) -> list[ConsumerView]:
    """Live, non-silent consumers that have not reported a loaded step greater than ``step``."""
    return [
        c
        for c in consumers
        if c.live
        and not is_silent(c, now, timeout_s)
        and (c.loaded_step is None or c.loaded_step <= step)
    ]


def seconds_until_change(
    step: int, consumers: Iterable[ConsumerView], now: datetime, timeout_s: float
) -> float | None:
    """Seconds until the first consumer blocking ``step`` turns silent (and stops blocking)."""
    waits = [
        timeout_s - (now - c.last_report).total_seconds()
        for c in blocking_consumers(step, consumers, now, timeout_s)
    ]
    return max(0.0, min(waits)) if waits else None
