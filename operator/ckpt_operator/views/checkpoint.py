"""The view of a Checkpoint object that every decision about it reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

from ckpt_operator.api import names
from ckpt_operator.api.conditions import parse_time
from ckpt_operator.api.models import INT32_MAX, MAX_STEP
from ckpt_operator.storage import layout
from ckpt_operator.views import fields

VERIFIED = "Verified"
"""The condition the operator sets when it has checked the files against the manifest."""

VERIFIED_REASON = "Verified"
"""The reason of a True ``Verified`` condition: the operator's own verification passed."""


def operator_verified(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether a Ready status carries the record the operator's verification writes with it.

    ``phase: Ready`` alone proves nothing: whoever could write the status (before the chart's
    status-writer admission policy, or without it) could set it. The operator writes Ready
    only together with the digest it checked, the time it checked, and a True ``Verified``
    condition for this generation; a Ready without them is verified again.
    """
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == VERIFIED), None)
    return (
        status.get("phase") == "Ready"
        and bool(status.get("digest"))
        and bool(status.get("verifiedAt"))
        and condition is not None
        and condition.get("status") == "True"
        and condition.get("reason") == VERIFIED_REASON
        and condition.get("observedGeneration") == generation
    )


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
    created: datetime | None = None
    """``creationTimestamp``: of two records of the same files, the older one is the record."""

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

    @property
    def expected_path(self) -> str | None:
        """Where the store layout puts the checkpoint this spec describes; None if it cannot."""
        if not (0 <= self.step <= MAX_STEP and 0 <= self.attempt <= INT32_MAX):
            return None
        fmt = next((f for f in get_args(names.Format) if f == self.format), None)
        kind = next((k for k in get_args(names.Kind) if k == self.kind), None)
        if fmt is None or kind is None:
            return None
        return layout.CheckpointName(self.step, self.attempt, fmt, kind).path

    @property
    def consistent(self) -> bool:
        """Its path is the store entry its step, attempt, format and kind name: only such a
        record can be verified, resumed from, or own files (see ``policy.records``)."""
        return self.path == self.expected_path

    @property
    def canonical_name(self) -> str | None:
        """The name the SDK and the store scan give the record of its path; None when
        inconsistent."""
        if not self.consistent:
            return None
        kind: names.Kind = "weights" if self.kind == "weights" else "full"
        return names.checkpoint_object_name(self.run, self.step, self.attempt, kind)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CheckpointInfo:
        """Never raises: a malformed field reads as a value no decision trusts (a step of -1,
        an empty path), which makes the record inconsistent, so it owns no files."""
        meta, spec = fields.mapping(body.get("metadata")), fields.mapping(body.get("spec"))
        status = fields.mapping(body.get("status"))
        step, attempt = fields.integer(spec.get("step")), fields.integer(spec.get("attempt"))
        size = fields.integer(status.get("sizeBytes"))
        metrics = {
            k: v
            for k, raw in fields.mapping(spec.get("metrics")).items()
            if isinstance(k, str) and (v := fields.number(raw)) is not None
        }
        return cls(
            name=fields.text(meta.get("name")),
            namespace=fields.text(meta.get("namespace")),
            run=fields.text(spec.get("run")),
            step=-1 if step is None else step,
            attempt=-1 if attempt is None else attempt,
            path=fields.text(spec.get("path")),
            format=fields.text(spec.get("format", "dir")),
            kind=fields.text(spec.get("kind", "full")),
            phase=fields.text(status.get("phase")) or "Pending",
            terminating=bool(meta.get("deletionTimestamp")),
            force_delete=fields.string_map(meta.get("annotations")).get(
                names.ANNOTATION_FORCE_DELETE
            )
            == "true",
            size_bytes=size if size is not None and size >= 0 else None,
            metrics=metrics,
            was_verified=any(
                c.get("type") == VERIFIED and c.get("status") == "True"
                for c in fields.objects(status.get("conditions"))
            ),
            created=parse_time(meta.get("creationTimestamp")),
        )
