"""Checkpoint records for the pure-policy tests, named as the real ones are."""

from __future__ import annotations

from typing import Any

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo


def checkpoint(step: int, attempt: int = 0, phase: str = "Ready", **fields: Any) -> CheckpointInfo:
    """A directory checkpoint of run ``r`` in namespace ``ns``, full unless ``kind`` says
    otherwise; ``fields`` override."""
    kind = fields.pop("kind", "full")
    return CheckpointInfo(
        name=names.checkpoint_object_name("r", step, attempt, kind),
        namespace="ns",
        run="r",
        step=step,
        attempt=attempt,
        path=layout.CheckpointName(step, attempt, "dir", kind).path,
        phase=phase,
        kind=kind,
        **fields,
    )
