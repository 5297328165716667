"""Compact, immutable views of our objects, as kept in Kopf indexes and fed to pure policies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpt_operator.api import names


@dataclass(frozen=True)
class CheckpointInfo:
    """What the decisions need to know about one Checkpoint object."""

    name: str
    namespace: str
    run: str
    step: int
    attempt: int
    path: str
    format: str = "dir"
    kind: str = "full"
    phase: str = "Pending"
    terminating: bool = False
    force_delete: bool = False
    size_bytes: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.phase == "Ready" and not self.terminating

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CheckpointInfo:
        meta, spec = body["metadata"], body["spec"]
        status = body.get("status") or {}
        annotations = meta.get("annotations") or {}
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", ""),
            run=spec["run"],
            step=int(spec["step"]),
            attempt=int(spec["attempt"]),
            path=spec["path"],
            format=spec.get("format", "dir"),
            kind=spec.get("kind", "full"),
            phase=status.get("phase") or "Pending",
            terminating=bool(meta.get("deletionTimestamp")),
            force_delete=annotations.get(names.ANNOTATION_FORCE_DELETE) == "true",
            size_bytes=status.get("sizeBytes"),
            metrics=dict(spec.get("metrics") or {}),
        )
