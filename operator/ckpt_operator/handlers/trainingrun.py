"""TrainingRun handlers."""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.handlers.common import initial_status, resource

TRAINING_RUNS = resource("trainingruns")


@kopf.on.create(*TRAINING_RUNS)
@kopf.on.resume(*TRAINING_RUNS)
async def initialize(status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """Give a new run its Pending phase and an Unknown Ready condition."""
    first = initial_status(
        status, meta.get("generation"), "Pending", "Ready", "Initializing", "seen by the operator"
    )
    if first is not None:
        patch.status.update(first)
        metrics.RESOURCES_SEEN.labels("TrainingRun").inc()
