"""Builders of the small objects several parts write: owner references, Checkpoint bodies.

The SDK registers a checkpoint after committing it, the operator's store scan registers the ones
it finds, and tests do both: all of them build the body here, so a Checkpoint looks the same
whoever created it. Pure functions returning plain dicts, ready for any client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.storage.layout import CheckpointName


def owner_reference(run: str, uid: str, *, block_deletion: bool = False) -> dict[str, Any]:
    """The TrainingRun as controller owner: deleting the run garbage-collects what it owns."""
    reference: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "name": run,
        "uid": uid,
        "controller": True,
    }
    if block_deletion:
        reference["blockOwnerDeletion"] = True
    return reference


def checkpoint_body(
    run: str,
    name: CheckpointName,
    *,
    metrics: Mapping[str, float] | None = None,
    owner_uid: str | None = None,
    world_size: int | None = None,
    shards: int | None = None,
) -> dict[str, Any]:
    """The Checkpoint object recording ``name`` of ``run``; owned by the run when its uid is
    known (an ownerless one gets its owner reference when the operator verifies it).
    ``world_size`` and ``shards`` (``spec.worldSize``, ``spec.shards``) describe a checkpoint
    written by several ranks; left out when None, as for a single process's."""
    metadata: dict[str, Any] = {
        "name": name.object_name(run),
        "labels": {
            names.LABEL_RUN: run,
            names.LABEL_ATTEMPT: str(name.attempt),
            names.LABEL_STEP: str(name.step),
        },
    }
    if owner_uid:
        metadata["ownerReferences"] = [owner_reference(run, owner_uid)]
    spec: dict[str, Any] = {
        "run": run,
        "step": name.step,
        "attempt": name.attempt,
        "path": name.path,
        "format": name.format,
        "kind": name.kind,
    }
    if metrics:
        spec["metrics"] = {key: float(value) for key, value in metrics.items()}
    if world_size is not None:
        spec["worldSize"] = world_size
    if shards is not None:
        spec["shards"] = shards
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Checkpoint",
        "metadata": metadata,
        "spec": spec,
    }
