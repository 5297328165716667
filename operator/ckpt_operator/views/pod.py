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
from ckpt_operator.api.models import INT32_MAX, MAX_STEP, CheckpointRef
from ckpt_operator.storage import layout
from ckpt_operator.views import fields

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
        for cs in fields.objects(status.get(key)):
            term = fields.mapping(fields.mapping(cs.get("state")).get("terminated"))
            if term:
                found.append((fields.text(cs.get("name")), term))
    return found


def _finished_at(status: Mapping[str, Any]) -> datetime | None:
    stamps = [parse_time(t.get("finishedAt")) for _, t in _terminated(status)]
    known = [s for s in stamps if s is not None]
    return max(known) if known else None


def failure_of(status: Mapping[str, Any], first_container: str | None = None) -> Failure:
    """Summarise a pod's ``status`` for the restart rules (:mod:`ckpt_operator.policy.restart`)."""
    terminated = _terminated(status)
    codes = tuple(code for _, t in terminated if (code := fields.integer(t.get("exitCode"))))
    reasons: set[str] = set()
    pod_reason = fields.optional_text(status.get("reason"))
    if pod_reason:
        reasons.add(pod_reason)
    container_reason: str | None = None
    message = fields.optional_text(status.get("message"))
    main = next((t for name, t in terminated if name == first_container), None)
    for _, term in terminated:
        if term_reason := fields.optional_text(term.get("reason")):
            reasons.add(term_reason)
            container_reason = container_reason or term_reason
    for cond in fields.objects(status.get("conditions")):
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            reasons.add("DisruptionTarget")
            if cond_reason := fields.optional_text(cond.get("reason")):
                reasons.add(cond_reason)
            message = message or fields.optional_text(cond.get("message"))
    main_code = fields.integer(main.get("exitCode")) if main is not None else None
    if main is not None and main_code is not None:
        exit_code: int | None = main_code
        main_reason = fields.optional_text(main.get("reason"))
        message = message or fields.optional_text(main.get("message"))
    else:
        exit_code = codes[0] if codes else None
        main_reason = None
    return Failure(
        exit_codes=codes,
        reasons=frozenset(reasons),
        exit_code=exit_code,
        reason=pod_reason or main_reason or container_reason,
        message=message[:1024] if message else None,
    )


def _env_value(containers: list[Mapping[str, Any]], name: str) -> str | None:
    env = fields.objects(containers[0].get("env")) if containers else []
    return next((fields.text(e.get("value")) for e in env if e.get("name") == name), None)


def _resume_of(
    meta: Mapping[str, Any], containers: list[Mapping[str, Any]]
) -> CheckpointRef | None:
    uri = _env_value(containers, names.ENV_RESUME_FROM)
    parsed = layout.parse_committed(uri) if uri else None
    if not uri or parsed is None:
        return None
    name = fields.string_map(meta.get("annotations")).get(names.ANNOTATION_RESUME_FROM) or ""
    return CheckpointRef(name=name, step=parsed.step, attempt=parsed.attempt, uri=uri)


def _candidates_of(containers: list[Mapping[str, Any]]) -> tuple[str, ...]:
    try:
        found = json.loads(_env_value(containers, names.ENV_RESUME_CANDIDATES) or "[]")
    except (ValueError, RecursionError):
        return ()
    return tuple(uri for uri in found if isinstance(uri, str)) if isinstance(found, list) else ()


def waiting_reason(status: Mapping[str, Any]) -> str | None:
    """Why a pod is not running yet, as a person would want to read it; None if unknown."""
    for cs in [
        *fields.objects(status.get("initContainerStatuses")),
        *fields.objects(status.get("containerStatuses")),
    ]:
        waiting = fields.mapping(fields.mapping(cs.get("state")).get("waiting"))
        reason = fields.optional_text(waiting.get("reason"))
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            detail = fields.optional_text(waiting.get("message")) or fields.text(cs.get("name"))
            return f"{reason}: {detail}"[:512]
    for cond in fields.objects(status.get("conditions")):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = fields.optional_text(cond.get("reason")) or "NotScheduled"
            return f"{reason}: {fields.text(cond.get('message'))}"[:512]
    return None


JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def completion_index(meta: Mapping[str, Any]) -> int | None:
    """The Job completion index the Job controller annotates a pod of an Indexed Job with."""
    annotations = fields.string_map(meta.get("annotations"))
    return fields.decimal(annotations.get(JOB_COMPLETION_INDEX), INT32_MAX)


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
        meta = fields.mapping(body.get("metadata"))
        labels = fields.string_map(meta.get("labels"))
        run = labels.get(names.LABEL_RUN)
        attempt = fields.decimal(labels.get(names.LABEL_ATTEMPT), INT32_MAX)
        if not run or attempt is None:
            return None
        rank = fields.decimal(labels.get(names.LABEL_NODE_RANK, "0"), INT32_MAX)
        owner = next(
            (o for o in fields.objects(meta.get("ownerReferences")) if o.get("controller")),
            None,
        )
        status = fields.mapping(body.get("status"))
        raw_phase = status.get("phase") or "Pending"
        phase: PodPhase = next((p for p in _KNOWN_PHASES if p == raw_phase), "Unknown")
        spec_containers = fields.objects(fields.mapping(body.get("spec")).get("containers"))
        first_name = spec_containers[0].get("name") if spec_containers else None
        return cls(
            name=fields.text(meta.get("name")),
            namespace=fields.text(meta.get("namespace")),
            run=run,
            attempt=attempt,
            owner_uid=fields.optional_text(owner.get("uid")) if owner else None,
            phase=phase,
            terminating=bool(meta.get("deletionTimestamp")),
            failure=failure_of(status, first_name),
            started_at=parse_time(status.get("startTime")),
            finished_at=_finished_at(status),
            resumed_from=_resume_of(meta, spec_containers),
            resume_candidates=_candidates_of(spec_containers),
            rank=rank or 0,
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
    bad_report: str | None = None
    """The ``loaded-step`` annotation when it is not a step (shortened): no report at all."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ConsumerView:
        """Never raises. A report is a step in plain ASCII digits (blanks around are fine)
        within the steps the store can hold. Anything else (``-1``, ``1.5``, ``+5``, ``1e3``,
        a 30-digit number) is no report: the pod keeps blocking (safe deletion), and
        ``bad_report`` lets the run show why."""
        meta = fields.mapping(body.get("metadata"))
        raw = fields.mapping(meta.get("annotations")).get(names.ANNOTATION_LOADED_STEP)
        loaded = fields.decimal(raw.strip() if isinstance(raw, str) else raw, MAX_STEP)
        phase = fields.mapping(body.get("status")).get("phase")
        return cls(
            name=fields.text(meta.get("name")),
            labels=fields.string_map(meta.get("labels")),
            loaded_step=loaded,
            last_report=last_report_time(meta),
            live=phase not in ("Succeeded", "Failed"),
            bad_report=None if raw is None or loaded is not None else repr(raw)[:64],
        )


_REPORT_FIELDS = (f"f:{names.ANNOTATION_LOADED_STEP}", f"f:{names.ANNOTATION_HEARTBEAT}")


def _reports(managed: Any) -> bool:
    metadata = fields.mapping(fields.mapping(managed).get("f:metadata"))
    annotations = fields.mapping(metadata.get("f:annotations"))
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
        for entry in fields.objects(meta.get("managedFields"))
        if _reports(entry.get("fieldsV1"))
    ]
    known = [s for s in stamps if s is not None]
    if known:
        return max(known)
    return parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)
