"""When a checkpoint's storage may go: a pure function of compact views (invariant 1).

Storage may be deleted only when

* every live consumer of the run has reported a loaded step greater than the checkpoint's step
  (a consumer silent for longer than ``reportTimeoutSeconds`` stops blocking; it is flagged),
* it is not the resume target of a pending or running attempt, and
* it is not the run's newest verified checkpoint (overall, or of kind ``full``: the point the
  next attempt resumes from) —

unless the checkpoint carries ``ckpt.dev/force-delete: "true"``. While the run is gone or
being deleted the resume-target and newest protections lapse (nothing will resume), but
consumers keep blocking. The operator's finalizer, the kubectl plugin's ``--dry-run`` and the
unit tests all call :func:`deletion_blockers`, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.views.checkpoint import CheckpointInfo

DEFAULT_REPORT_TIMEOUT_S = 600.0
VERIFIED = "Verified"
LIVE_ATTEMPT_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True)
class ConsumerView:
    """A pod that loads a run's checkpoints and reports the step it has loaded."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    loaded_step: int | None = None
    last_report: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))
    """When the loaded step last changed (or the pod was created, before any report)."""
    live: bool = True
    """False once the pod has finished (Succeeded/Failed): it loads nothing any more."""


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
    terminating: bool = False


def checkpoint_view(body: Mapping[str, Any]) -> CheckpointInfo:
    """The record of a Checkpoint body, phase ``Ready`` if it ever verified.

    Deletion moves ``status.phase`` to ``Deleting`` but leaves the ``Verified`` condition, so a
    checkpoint being deleted still counts as the run's newest Ready one until a newer one is.
    """
    info = CheckpointInfo.from_body(body)
    conditions = (body.get("status") or {}).get("conditions") or []
    was_verified = any(c.get("type") == VERIFIED and c.get("status") == "True" for c in conditions)
    if info.phase == "Deleting" and was_verified:
        return replace(info, phase="Ready")
    return info


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (``2024-01-01T00:00:00Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _reports_loaded_step(fields: Any) -> bool:
    annotations = ((fields or {}).get("f:metadata") or {}).get("f:annotations") or {}
    return f"f:{names.ANNOTATION_LOADED_STEP}" in annotations


def last_report_time(meta: Mapping[str, Any]) -> datetime:
    """When the pod last reported, from the API server's own bookkeeping.

    ``managedFields`` records, per field manager, when that manager last changed any field it
    owns; the entry owning the ``loaded-step`` annotation therefore dates the last report (or a
    later change by the same reporter, which only delays silence — the safe direction). Being
    stored on the object, it survives operator restarts. Before any report: the creation time.
    """
    stamps = [
        parse_time(entry.get("time"))
        for entry in meta.get("managedFields") or []
        if _reports_loaded_step(entry.get("fieldsV1"))
    ]
    known = [s for s in stamps if s is not None]
    if known:
        return max(known)
    return parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)


def consumer_from_pod(body: Mapping[str, Any]) -> ConsumerView:
    meta = body.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(names.ANNOTATION_LOADED_STEP)
    try:
        loaded = int(str(raw).strip()) if raw is not None else None
    except ValueError:
        loaded = None  # an unparseable report is no report: the pod keeps blocking
    phase = (body.get("status") or {}).get("phase")
    return ConsumerView(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        loaded_step=loaded,
        last_report=last_report_time(meta),
        live=phase not in ("Succeeded", "Failed"),
    )


def run_from_body(body: Mapping[str, Any]) -> RunView:
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
    return RunView(
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


def default_selector(run: str) -> dict[str, Any]:
    return {"matchLabels": {names.LABEL_CONSUMER_OF: run}}


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches every pod."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def consumers_of(
    run: str, selector: Mapping[str, Any] | None, pods: Iterable[ConsumerView]
) -> list[ConsumerView]:
    chosen = selector if selector else default_selector(run)
    return [p for p in pods if selector_matches(chosen, p.labels)]


def is_silent(consumer: ConsumerView, now: datetime, timeout_s: float) -> bool:
    return (now - consumer.last_report).total_seconds() > timeout_s


def blocking_consumers(
    step: int, consumers: Iterable[ConsumerView], now: datetime, timeout_s: float
) -> list[ConsumerView]:
    """Live, non-silent consumers that have not reported a loaded step greater than ``step``."""
    return [
        c
        for c in consumers
        if c.live
        and not is_silent(c, now, timeout_s)
        and (c.loaded_step is None or c.loaded_step <= step)
    ]


def _newest(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    return max(checkpoints, key=lambda c: (c.step, c.attempt), default=None)


def verified(c: CheckpointInfo) -> bool:
    """Verified Ready, whether or not deletion has begun (see ``indexes.lifecycle_by_run``)."""
    return c.phase == "Ready"


def newest_protected(checkpoints: Iterable[CheckpointInfo]) -> set[str]:
    """Names of the run's newest verified checkpoint and newest verified ``full`` one.

    Terminating checkpoints count: deleting the newest does not make it any less the newest
    until a newer one is verified.
    """
    good = [c for c in checkpoints if verified(c)]
    picks = (_newest(good), _newest(c for c in good if c.kind == "full"))
    return {c.name for c in picks if c is not None}


def deletion_blockers(
    ckpt: CheckpointInfo,
    *,
    run: RunView | None,
    siblings: Iterable[CheckpointInfo],
    consumers: Sequence[ConsumerView],
    now: datetime,
) -> list[str]:
    """Why ``ckpt``'s storage must stay; empty means it may be deleted now.

    ``consumers`` are the pods matching the run's consumer selector (the default selector
    when the run is gone); ``siblings`` are all checkpoints of the run, ``ckpt`` included.
    """
    if ckpt.force_delete:
        return []
    timeout = run.report_timeout_s if run is not None else DEFAULT_REPORT_TIMEOUT_S
    blockers = [
        f"consumer {c.name} has loaded step "
        f"{'nothing yet' if c.loaded_step is None else c.loaded_step}, needs > {ckpt.step}"
        for c in blocking_consumers(ckpt.step, consumers, now, timeout)
    ]
    if run is not None and not run.terminating:
        if ckpt.name in run.resume_targets:
            blockers.append(f"resume target of a pending or running attempt of {run.name}")
        if ckpt.name in newest_protected([*siblings, ckpt]):
            blockers.append(f"newest Ready checkpoint of {run.name}")
    return blockers


def seconds_until_change(
    ckpt: CheckpointInfo,
    consumers: Iterable[ConsumerView],
    now: datetime,
    timeout_s: float,
) -> float | None:
    """Seconds until the first blocking consumer turns silent (and stops blocking), if any."""
    waits = [
        timeout_s - (now - c.last_report).total_seconds()
        for c in blocking_consumers(ckpt.step, consumers, now, timeout_s)
    ]
    return max(0.0, min(waits)) if waits else None
