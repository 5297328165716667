"""Which checkpoints still wait for a verdict long after they were registered.

Kopf handles a new object once; if that handling stalls (an API server timing out while Kopf
adds its finalizer leaves the object with no further event to wake it), a Checkpoint could wait
for verification until the operator restarts. The maintenance timer asks for a verification
of such checkpoints, which is an event Kopf handles (crash convergence). One waiting its turn
for a verification slot is not stalled: asking again would only add a patch to the backlog.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from ckpt_operator.views.checkpoint import CheckpointInfo

STALLED_AFTER = timedelta(minutes=5)
"""Longer than verification takes (retries with backoff included): no verdict by then is a stall."""


def stalled(
    checkpoints: Iterable[CheckpointInfo],
    now: datetime,
    queued: Collection[tuple[str, str]] = (),
    after: timedelta = STALLED_AFTER,
) -> list[CheckpointInfo]:
    """Checkpoints without a verdict (``Pending``) registered more than ``after`` ago, except
    those whose ``(namespace, name)`` is ``queued`` for verification now."""
    return [
        c
        for c in checkpoints
        if c.phase == "Pending"
        and not c.terminating
        and (c.namespace, c.name) not in queued
        and c.created is not None
        and now - c.created > after
    ]
