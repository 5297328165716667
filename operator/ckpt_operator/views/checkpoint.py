"""The view of a Checkpoint object that every decision about it reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpt_operator.api import names

VERIFIED = "Verified"
"""The condition the operator sets when it has checked the files against the manifest."""


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
    was_verified: bool = False
    """The ``Verified`` condition is True: it passed verification at some point."""

    @property
    def ready(self) -> bool:
        """Usable now: Ready and not being deleted."""
        return self.phase == "Ready" and not self.terminating

    @property
    def verified(self) -> bool:
        """Ready, or verified before its deletion began.

        Deletion moves ``phase`` to ``Deleting`` but leaves the ``Verified`` condition, so a
        checkpoint being deleted still counts as the run's newest verified one (which keeps it)
        until a newer one is verified.
        """
        return self.phase == "Ready" or (self.phase == "Deleting" and self.was_verified)

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
            was_verified=any(
                c.get("type") == VERIFIED and c.get("status") == "True"
                for c in status.get("conditions") or []
            ),
        )
