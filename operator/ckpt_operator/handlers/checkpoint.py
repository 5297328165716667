"""Checkpoint handlers."""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.handlers.common import initial_status, resource

CHECKPOINTS = resource("checkpoints")


@kopf.on.create(*CHECKPOINTS)
@kopf.on.resume(*CHECKPOINTS)
async def initialize(status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """Give a new checkpoint its Pending phase and an Unknown Verified condition."""
    first = initial_status(
        status, meta.get("generation"), "Pending", "Verified", "Pending", "awaiting verification"
    )
    if first is not None:
        patch.status.update(first)
        metrics.RESOURCES_SEEN.labels("Checkpoint").inc()
