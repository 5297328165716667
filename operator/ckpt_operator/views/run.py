"""The view of a TrainingRun that checkpoint deletion, retention and maintenance read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RunKey = tuple[str, str]
"""``(namespace, run name)``: how indexes and wake-ups key a run."""

DEFAULT_REPORT_TIMEOUT_S = 600.0
LIVE_ATTEMPT_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True)
class RunView:
    """What deletion and retention need to know about a TrainingRun."""

    name: str
    namespace: str = ""
    uid: str = ""
    store_uri: str = ""
    secret_name: str | None = None
    selector: Mapping[str, Any] | None = None
    report_timeout_s: float = DEFAULT_REPORT_TIMEOUT_S
    retention: Mapping[str, Any] | None = None
    verify: str = "full"
    resume_targets: frozenset[str] = frozenset()
    """Checkpoints a pending or running attempt resumes from."""
    terminating: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunView:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        status = body.get("status") or {}
        store = spec.get("store") or {}
        consumers = spec.get("consumers") or {}
        targets = frozenset(
            str(a["resumedFrom"]["name"])
            for a in status.get("attempts") or []
            if a.get("phase", "Pending") in LIVE_ATTEMPT_PHASES
            and (a.get("resumedFrom") or {}).get("name")
        )
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            store_uri=str(store.get("uri", "")),
            secret_name=(store.get("secretRef") or {}).get("name"),
            selector=consumers.get("selector"),
            report_timeout_s=float(consumers.get("reportTimeoutSeconds", DEFAULT_REPORT_TIMEOUT_S)),
            retention=spec.get("retention"),
            verify=str(spec.get("verify", "full")),
            resume_targets=targets,
            terminating=bool(meta.get("deletionTimestamp")),
        )
