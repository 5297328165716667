"""Views of pods: attempt pods as the run controller sees them, consumer pods as GC sees them.

Pods are only ever watched and indexed, never handled (a handler would put a finalizer on them),
so everything the operator needs from a pod is read here, once per watch event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ckpt_operator.api import names
from ckpt_operator.api.conditions import parse_time
from ckpt_operator.api.models import CheckpointRef
from ckpt_operator.storage import layout

PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
_KNOWN_PHASES: tuple[PodPhase, ...] = ("Pending", "Running", "Succeeded", "Failed")


@dataclass(frozen=True)
class Failure:
    """What a failed pod left behind, as far as the restart rules care."""

    exit_codes: tuple[int, ...] = ()
    """Exit codes of the terminated containers (init containers included), zeros dropped."""
    reasons: frozenset[str] = field(default_factory=frozenset)
    """Every reason found: pod ``status.reason``, container reasons, DisruptionTarget."""
    exit_code: int | None = None
    """The one shown in status: the first container's, else the first non-zero."""
    reason: str | None = None
    """The one shown in status: the pod's reason, else the first container's."""
    message: str | None = None

    def describe(self) -> str:
        parts = []
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        if self.reason:
            parts.append(f"reason {self.reason}")
        return ", ".join(parts) or "no exit code or reason"


def _terminated(status: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                found.append((str(cs.get("name", "")), term))
    return found


def _finished_at(status: Mapping[str, Any]) -> datetime | None:
    stamps = [parse_time(t.get("finishedAt")) for _, t in _terminated(status)]
    known = [s for s in stamps if s is not None]
    return max(known) if known else None


def failure_of(status: Mapping[str, Any], first_container: str | None = None) -> Failure:
    """Summarise a pod's ``status`` for the restart rules (:mod:`ckpt_operator.policy.restart`)."""
    terminated = _terminated(status)
    codes = tuple(int(t.get("exitCode", 0)) for _, t in terminated if t.get("exitCode"))
    reasons: set[str] = set()
    pod_reason = status.get("reason")
    if pod_reason:
        reasons.add(str(pod_reason))
    container_reason: str | None = None
    message = status.get("message")
    main = next((t for name, t in terminated if name == first_container), None)
    for _, term in terminated:
        if term.get("reason"):
            reasons.add(str(term["reason"]))
            container_reason = container_reason or str(term["reason"])
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            reasons.add("DisruptionTarget")
            if cond.get("reason"):
                reasons.add(str(cond["reason"]))
            message = message or cond.get("message")
    if main is not None and main.get("exitCode") is not None:
        exit_code: int | None = int(main["exitCode"])
        main_reason = main.get("reason")
        message = message or main.get("message")
    else:
        exit_code = codes[0] if codes else None
        main_reason = None
    return Failure(
        exit_codes=codes,
        reasons=frozenset(reasons),
        exit_code=exit_code,
        reason=str(pod_reason) if pod_reason else (main_reason or container_reason),
        message=str(message)[:1024] if message else None,
    )


def _env_value(containers: list[Any], name: str) -> str | None:
    env = containers[0].get("env") or [] if containers else []
    return next((e.get("value") for e in env if e.get("name") == name), None)


def _resume_of(meta: Mapping[str, Any], containers: list[Any]) -> CheckpointRef | None:
    uri = _env_value(containers, names.ENV_RESUME_FROM)
    parsed = layout.parse_committed(uri) if uri else None
    if not uri or parsed is None:
        return None
    name = (meta.get("annotations") or {}).get(names.ANNOTATION_RESUME_FROM) or ""
    return CheckpointRef(name=name, step=parsed.step, attempt=parsed.attempt, uri=uri)


def _candidates_of(containers: list[Any]) -> tuple[str, ...]:
    try:
        found = json.loads(_env_value(containers, names.ENV_RESUME_CANDIDATES) or "[]")
    except ValueError:
        return ()
    return tuple(str(uri) for uri in found) if isinstance(found, list) else ()


def waiting_reason(status: Mapping[str, Any]) -> str | None:
    """Why a pod is not running yet, as a person would want to read it; None if unknown."""
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in (
            "ContainerCreating",
            "PodInitializing",
        ):
            return f"{waiting['reason']}: {waiting.get('message') or cs.get('name')}"[:512]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason') or 'NotScheduled'}: {cond.get('message') or ''}"[:512]
    return None


JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def completion_index(meta: Mapping[str, Any]) -> int | None:
    """The Job completion index the Job controller annotates a pod of an Indexed Job with."""
    raw = str((meta.get("annotations") or {}).get(JOB_COMPLETION_INDEX, ""))
    return int(raw) if raw.isdigit() else None


@dataclass(frozen=True)
class AttemptPod:
    """What the run controller needs to know about one attempt pod (kept in a Kopf index)."""

    name: str
    namespace: str
    run: str
    attempt: int
    owner_uid: str | None = None
    phase: PodPhase = "Pending"
    terminating: bool = False
    failure: Failure = field(default_factory=Failure)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resumed_from: CheckpointRef | None = None
    """Where the pod resumes from, as its env says: status records it when adopting the pod."""
    resume_candidates: tuple[str, ...] = ()
    """Its ``CKPT_RESUME_CANDIDATES``: the rest of a partly created gang gets the same."""
    rank: int = 0
    waiting: str | None = None
    """Why it is not running yet (unschedulable, image pull back-off, …), if known."""
    completion_index: int | None = None
    """An Indexed Job's pod: its index (attached runs count a Job's pods per index)."""

    @property
    def live(self) -> bool:
        """May still run containers (and hold GPUs, ports): not Succeeded or Failed."""
        return self.phase not in ("Succeeded", "Failed")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AttemptPod | None:
        """The view of a pod labelled as an attempt, or None when its labels are not ours."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        run, attempt = labels.get(names.LABEL_RUN), labels.get(names.LABEL_ATTEMPT)
        if not run or attempt is None or not str(attempt).isdigit():
            return None
        rank = str(labels.get(names.LABEL_NODE_RANK, "0"))
        owner = next(
            (o for o in meta.get("ownerReferences") or [] if o.get("controller")),
            None,
        )
        status = body.get("status") or {}
        raw_phase = status.get("phase") or "Pending"
        phase: PodPhase = next((p for p in _KNOWN_PHASES if p == raw_phase), "Unknown")
        spec_containers = (body.get("spec") or {}).get("containers") or []
        first_name = spec_containers[0].get("name") if spec_containers else None
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            run=str(run),
            attempt=int(attempt),
            owner_uid=owner.get("uid") if owner else None,
            phase=phase,
            terminating=bool(meta.get("deletionTimestamp")),
            failure=failure_of(status, first_name),
            started_at=parse_time(status.get("startTime")),
            finished_at=_finished_at(status),
            resumed_from=_resume_of(meta, spec_containers),
            resume_candidates=_candidates_of(spec_containers),
            rank=int(rank) if rank.isdigit() else 0,
            waiting=waiting_reason(status) if phase == "Pending" else None,
            completion_index=completion_index(meta),
        )


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

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ConsumerView:
        meta = body.get("metadata") or {}
        raw = (meta.get("annotations") or {}).get(names.ANNOTATION_LOADED_STEP)
        try:
            loaded = int(str(raw).strip()) if raw is not None else None
        except ValueError:
            loaded = None  # an unparseable report is no report: the pod keeps blocking
        phase = (body.get("status") or {}).get("phase")
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            loaded_step=loaded,
            last_report=last_report_time(meta),
            live=phase not in ("Succeeded", "Failed"),
        )


_REPORT_FIELDS = (f"f:{names.ANNOTATION_LOADED_STEP}", f"f:{names.ANNOTATION_HEARTBEAT}")


def _reports(fields: Any) -> bool:
    annotations = ((fields or {}).get("f:metadata") or {}).get("f:annotations") or {}
    return any(f in annotations for f in _REPORT_FIELDS)


def last_report_time(meta: Mapping[str, Any]) -> datetime:
    """When the consumer last showed it is alive, from the API server's own bookkeeping.

    ``managedFields`` records, per field manager, when that manager last changed any field it
    owns; the entry owning the ``loaded-step`` or ``heartbeat`` annotation therefore dates the
    last report or heartbeat (or a later change by the same reporter, which only delays silence
    — the safe direction). A consumer serving one step for long stays protected by refreshing
    its heartbeat; a dead one stops changing anything. Being stored on the object, it survives
    operator restarts. Before any report: the creation time.
    """
    stamps = [
        parse_time(entry.get("time"))
        for entry in meta.get("managedFields") or []
        if _reports(entry.get("fieldsV1"))
    ]
    known = [s for s in stamps if s is not None]
    if known:
        return max(known)
    return parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)
