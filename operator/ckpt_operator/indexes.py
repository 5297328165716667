"""Kopf indexes: in-memory views kept current by watch events, so no decision LISTs the API.

A restart's cost must not grow with the number of checkpoints the cluster holds (issue 3's
benchmark counts API requests per restart), so handlers read these instead of listing.
"""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator.handlers.common import resource
from ckpt_operator.records import CheckpointInfo

RunKey = tuple[str, str]  # (namespace, run name)


@kopf.index(*resource("checkpoints"))
async def checkpoints_by_run(
    body: kopf.Body, namespace: str, spec: kopf.Spec, **_: Any
) -> dict[RunKey, CheckpointInfo]:
    """Every Checkpoint, grouped by its run: ``checkpoints_by_run[(ns, run)]``."""
    return {(namespace, spec["run"]): CheckpointInfo.from_body(body)}
