"""Kopf indexes: in-memory views kept current by watch events, so no decision LISTs the API.

A restart's cost must not grow with the number of checkpoints the cluster holds (issue 3's
benchmark counts API requests per restart), so handlers read these instead of listing.
"""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator.handlers.common import resource
from ckpt_operator.policy.deletion import (
    ConsumerView,
    RunView,
    checkpoint_view,
    consumer_from_pod,
    run_from_body,
)
from ckpt_operator.views.checkpoint import CheckpointInfo

RunKey = tuple[str, str]  # (namespace, run name)


@kopf.index(*resource("checkpoints"))
async def checkpoints_by_run(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[RunKey, CheckpointInfo]:
    """Every Checkpoint, grouped by its run: ``checkpoints_by_run[(ns, run)]``."""
    return {(namespace or "", spec["run"]): CheckpointInfo.from_body(body)}


# --- checkpoint lifecycle (issue 4): deletion, retention, consumers -------------------------


@kopf.index(*resource("checkpoints"))
async def lifecycle_by_run(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[RunKey, CheckpointInfo]:
    """Checkpoints by run, ``phase`` Ready when verified even while being deleted."""
    return {(namespace or "", spec["run"]): checkpoint_view(body)}


@kopf.index(*resource("trainingruns"))
async def runs_by_key(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[RunKey, RunView]:
    """Every TrainingRun's store, consumers, retention and live resume targets."""
    return {(namespace or "", name): run_from_body(body)}


@kopf.index("pods")
async def pods_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, ConsumerView]:
    """Pods as potential consumers; all of them, since ``consumers.selector`` is arbitrary."""
    return {namespace or "": consumer_from_pod(body)}
