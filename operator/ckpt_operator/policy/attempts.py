"""A TrainingRun's attempts: the state machine, and the trainer pod of one attempt.

Everything here is pure: :func:`next_step` maps what the controller knows (the run's spec and
status, its attempt pods, its checkpoints, the clock) to the status the run should have and the
pod that should exist. The Kopf handler only feeds it and carries out the result, so after an
operator crash at any instant the same inputs give the same answer (invariant 4).

Status is the record that survives restarts. The state is read from it like this:

* no attempts yet                         -> start attempt 0;
* last attempt open (Pending/Running):
    - its pod Succeeded                   -> the run Succeeded;
    - its pod Failed, or vanished after it ran -> apply the restart policy: FailRun, or
      close it and start the next one (at once, or BackingOff until ``nextAttemptAfter``);
    - its pod missing, never seen running -> (re)create it (the status write that records
      an attempt and the pod's creation go out together; a crash between them leaves this
      state, and the pod's name is deterministic, so creating it twice is a harmless
      conflict);
* last attempt closed, run BackingOff      -> start the next one when ``nextAttemptAfter``
  has passed.

Counters (``restarts``, ``attemptsWithoutProgress``) change in the same status write that
closes an attempt, so no failure is ever counted twice or lost. If the next pod was created
but the write that decided it was lost, the decision is made again from the same status and
the existing pod is adopted with the resume point it really has.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ckpt_operator.api import conditions, names
from ckpt_operator.api.models import (
    AttemptStatus,
    CheckpointRef,
    Condition,
    TrainingRunSpec,
    TrainingRunStatus,
)
from ckpt_operator.policy import restart
from ckpt_operator.policy.restart import Failure
from ckpt_operator.policy.resume import ResumePlan, made_progress, resume_plan
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo

READY, PROGRESSING, FAILED = "Ready", "Progressing", "Failed"
OUR_CONDITIONS = (READY, PROGRESSING, FAILED)

# Reasons for bad input. A run failed for one of these recovers when its spec is fixed.
INVALID_SPEC = "InvalidSpec"
INVALID_TEMPLATE = "InvalidTemplate"
STORE_NOT_ALLOWED = "StoreNotAllowed"
RECOVERABLE = frozenset({INVALID_SPEC, INVALID_TEMPLATE, STORE_NOT_ALLOWED})

POD_DELETED = "PodDeleted"
ANNOTATION_RESUME_FROM = f"{names.GROUP}/resume-from"
ANNOTATION_RESUME_STEP = f"{names.GROUP}/resume-step"

ENV_NAMES = (
    "CKPT_RUN",
    "CKPT_NAMESPACE",
    "CKPT_ATTEMPT",
    "CKPT_STORE",
    "CKPT_RESUME_FROM",
    "CKPT_RESUME_STEP",
    "CKPT_RESUME_CANDIDATES",
    "POD_NAME",
    "POD_NAMESPACE",
)

PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
Triple = tuple[conditions.Status, str, str]
NOT_FAILED: Triple = ("False", "NoFailure", "no attempt has failed the run")


# --- attempt pods, as the controller sees them ------------------------------------------------


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AttemptPod:
    """What the controller needs to know about one attempt pod (kept in a Kopf index)."""

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

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AttemptPod | None:
        """The view of a pod labelled as an attempt, or None when its labels are not ours."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        run, attempt = labels.get(names.LABEL_RUN), labels.get(names.LABEL_ATTEMPT)
        if not run or attempt is None or not str(attempt).isdigit():
            return None
        owner = next(
            (o for o in meta.get("ownerReferences") or [] if o.get("controller")),
            None,
        )
        status = body.get("status") or {}
        raw_phase = status.get("phase") or "Pending"
        phase: PodPhase = "Unknown"
        for known in ("Pending", "Running", "Succeeded", "Failed"):
            if raw_phase == known:
                phase = known
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
            started_at=_time(status.get("startTime")),
            finished_at=_finished_at(status),
            resumed_from=_resume_of(meta, spec_containers),
        )


def _resume_of(meta: Mapping[str, Any], containers: list[Any]) -> CheckpointRef | None:
    env = containers[0].get("env") or [] if containers else []
    uri = next((e.get("value") for e in env if e.get("name") == "CKPT_RESUME_FROM"), None)
    parsed = layout.parse_committed(uri) if uri else None
    if not uri or parsed is None:
        return None
    name = (meta.get("annotations") or {}).get(ANNOTATION_RESUME_FROM) or ""
    return CheckpointRef(name=name, step=parsed.step, attempt=parsed.attempt, uri=uri)


def _terminated(status: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                found.append((str(cs.get("name", "")), term))
    return found


def _finished_at(status: Mapping[str, Any]) -> datetime | None:
    stamps = [_time(t.get("finishedAt")) for _, t in _terminated(status)]
    known = [s for s in stamps if s is not None]
    return max(known) if known else None


def failure_of(status: Mapping[str, Any], first_container: str | None = None) -> Failure:
    """Summarise a pod's ``status`` for the restart rules (see :mod:`restart_policy`)."""
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


# --- the trainer pod --------------------------------------------------------------------------


def validate_template(template: Mapping[str, Any]) -> str | None:
    """What the CRD schema cannot check about the template, as a message; None when fine."""
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        return "template.spec must be a pod spec"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "template.spec.containers must list at least one container"
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"template.spec.containers[{index}]"
        if not isinstance(container, Mapping):
            return f"{where} must be an object"
        name = container.get("name")
        if not isinstance(name, str) or not name:
            return f"{where}.name is required"
        if name in seen:
            return f"{where}.name {name!r} is used twice"
        seen.add(name)
        image = container.get("image")
        if not isinstance(image, str) or not image:
            return f"{where}.image is required"
        env = container.get("env", [])
        if not isinstance(env, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in env
        ):
            return f"{where}.env must be a list of {{name, value}} objects"
    return None


def checkpoint_ref(checkpoint: CheckpointInfo | None, store_root: str) -> CheckpointRef | None:
    if checkpoint is None:
        return None
    return CheckpointRef(
        name=checkpoint.name,
        step=checkpoint.step,
        attempt=checkpoint.attempt,
        uri=layout.join_uri(store_root, checkpoint.path),
    )


def attempt_env(
    run: str, namespace: str, attempt: int, store_root: str, plan: ResumePlan
) -> list[dict[str, Any]]:
    """The env contract of DESIGN.md for the first container."""
    target = plan.target
    uris = [layout.join_uri(store_root, c.path) for c in plan.candidates]
    env: list[dict[str, Any]] = [
        {"name": "CKPT_RUN", "value": run},
        {"name": "CKPT_NAMESPACE", "value": namespace},
        {"name": "CKPT_ATTEMPT", "value": str(attempt)},
        {"name": "CKPT_STORE", "value": store_root},
        {"name": "CKPT_RESUME_FROM", "value": uris[0] if uris else ""},
        {"name": "CKPT_RESUME_STEP", "value": str(target.step) if target else ""},
        {"name": "CKPT_RESUME_CANDIDATES", "value": json.dumps(uris)},
    ]
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env


def build_pod(
    *,
    run: str,
    namespace: str,
    run_uid: str,
    template: Mapping[str, Any],
    attempt: int,
    store_root: str,
    plan: ResumePlan,
) -> dict[str, Any]:
    """The pod of one attempt: the template, our name, labels, owner, env and ``Never``.

    ``restartPolicy`` is forced to ``Never``: the operator restarts attempts (with a resume
    point), not the kubelet (which would rerun the container from its old env). Our env comes
    first so the template's own variables may refer to it as ``$(CKPT_STORE)``.
    """
    tmeta = template.get("metadata") or {}
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec["restartPolicy"] = "Never"
    containers = [dict(c) for c in spec.get("containers") or []]
    ours = attempt_env(run, namespace, attempt, store_root, plan)
    if containers:
        kept = [e for e in containers[0].get("env") or [] if e.get("name") not in ENV_NAMES]
        containers[0]["env"] = ours + kept
    spec["containers"] = containers
    target = plan.target
    annotations = {
        **(tmeta.get("annotations") or {}),
        ANNOTATION_RESUME_FROM: target.name if target else "",
        ANNOTATION_RESUME_STEP: str(target.step) if target else "",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.attempt_pod_name(run, attempt),
            "namespace": namespace,
            "labels": {
                **(tmeta.get("labels") or {}),
                names.LABEL_RUN: run,
                names.LABEL_ATTEMPT: str(attempt),
            },
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": "TrainingRun",
                    "name": run,
                    "uid": run_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


# --- the state machine ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunState:
    """Everything :func:`next_step` decides on."""

    name: str
    namespace: str
    generation: int | None
    spec: TrainingRunSpec | None
    status: TrainingRunStatus
    pods: Mapping[int, AttemptPod]
    """This run's attempt pods by attempt number (only those it owns)."""
    checkpoints: Sequence[CheckpointInfo]
    store_root: str
    now: datetime
    invalid: tuple[str, str] | None = None
    """``(reason, message)`` when the spec cannot be acted upon."""


@dataclass(frozen=True)
class Note:
    """A Kubernetes Event to post once the status that caused it is written."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    """What the controller must do now."""

    status: TrainingRunStatus
    create: int | None = None
    """The attempt whose pod must exist (create it after writing ``status``)."""
    plan: ResumePlan = field(default_factory=ResumePlan)
    notes: tuple[Note, ...] = ()
    wake_at: datetime | None = None
    """Look again at this time even if nothing happens (backoff)."""


def is_terminal(status: TrainingRunStatus) -> bool:
    """Succeeded, or Failed for a reason other than input the user can still fix."""
    if status.phase == "Succeeded":
        return True
    if status.phase != "Failed":
        return False
    failed = next((c for c in status.conditions if c.type == FAILED), None)
    return failed is None or failed.reason not in RECOVERABLE


class _Builder:
    """Mutable working copy of the status while one step is computed."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.status = state.status.model_copy(deep=True)
        self.status.observed_generation = state.generation
        self.notes: list[Note] = []
        self.create: int | None = None
        self.plan = ResumePlan()
        self.wake_at: datetime | None = None

    def conditions(self, ready: Triple, progressing: Triple, failed: Triple = NOT_FAILED) -> None:
        """Set Ready, Progressing and Failed, each as (status, reason, message)."""
        now = self.state.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        current = [c.wire() for c in self.status.conditions]
        for type_, (status, reason, message) in (
            (READY, ready),
            (PROGRESSING, progressing),
            (FAILED, failed),
        ):
            current = conditions.set_condition(
                current, type_, status, reason, message, self.state.generation, now
            )
        self.status.conditions = [Condition.model_validate(c) for c in current]

    def fail(self, reason: str, message: str) -> None:
        self.status.phase = "Failed"
        self.status.next_attempt_after = None
        self.conditions(
            ("False", reason, message), ("False", reason, message), ("True", reason, message)
        )

    def step(self) -> Step:
        return Step(
            status=self.status,
            create=self.create,
            plan=self.plan,
            notes=tuple(self.notes),
            wake_at=self.wake_at,
        )


def next_step(state: RunState) -> Step:
    """The status the run should have now, the pod that should exist, the events to post."""
    b = _Builder(state)
    plan = resume_plan(state.checkpoints)
    b.status.latest_checkpoint = checkpoint_ref(plan.target, state.store_root)
    st = b.status
    if state.invalid is not None or state.spec is None:
        reason, message = state.invalid or (INVALID_SPEC, "the spec cannot be parsed")
        failed = next((c for c in st.conditions if c.type == FAILED), None)
        if not is_terminal(st):
            if failed is None or (failed.status, failed.reason) != ("True", reason):
                b.notes.append(Note("Warning", reason, message))
            b.fail(reason, message)
        return b.step()
    if is_terminal(st):
        return b.step()
    spec = state.spec
    if not st.attempts:
        _start(b, 0, plan)
        return b.step()
    record = st.attempts[-1]
    if record.phase in ("Pending", "Running"):
        pod = state.pods.get(record.attempt)
        if pod is None:
            if record.phase == "Running":
                gone = Failure(reason=POD_DELETED, reasons=frozenset({POD_DELETED}))
                _failed(b, spec, record, gone, None, plan)
            else:
                _ensure_pod(b, record, plan)
        elif pod.phase == "Succeeded":
            _succeeded(b, record, pod)
        elif pod.phase == "Failed":
            _failed(b, spec, record, pod.failure, pod.finished_at, plan)
        else:
            _observe(b, record, pod)
    elif st.phase == "BackingOff" and st.next_attempt_after and state.now < st.next_attempt_after:
        b.wake_at = st.next_attempt_after
        _backing_off_conditions(b, record.attempt + 1, st.next_attempt_after)
    else:
        _start(b, record.attempt + 1, plan)
    return b.step()


def _resume_text(ref: CheckpointRef | None) -> str:
    if ref is None:
        return "from scratch (no Ready checkpoint)"
    return f"from {ref.name} (step {ref.step}, attempt {ref.attempt})"


def _start(b: _Builder, attempt: int, plan: ResumePlan) -> None:
    """Record a new attempt; the controller creates its pod along with this status write.

    If the pod exists already (created just before a crash or a lost write race), it is
    adopted: its own resume point is recorded, so status never disagrees with the pod.
    """
    st = b.status
    existing = b.state.pods.get(attempt)
    ref = existing.resumed_from if existing else checkpoint_ref(plan.target, b.state.store_root)
    st.attempts = [
        *st.attempts,
        AttemptStatus(
            attempt=attempt,
            pod=names.attempt_pod_name(b.state.name, attempt),
            start_time=b.state.now.replace(microsecond=0),
            phase="Pending",
            resumed_from=ref,
        ),
    ]
    st.attempt = attempt
    st.next_attempt_after = None
    st.phase = "Pending"
    if existing is None:
        b.create, b.plan = attempt, plan
    text = f"attempt {attempt} resumes {_resume_text(ref)}"
    if attempt == 0:
        b.notes.append(Note("Normal", "Started", text))
        reason = "AttemptStarted"
    else:
        b.notes.append(Note("Normal", "Restarted", text))
        reason = "Restarted"
    b.conditions(
        ("False", "AttemptPending", f"attempt {attempt} is pending"),
        ("True", reason, text),
    )


def _ensure_pod(b: _Builder, record: AttemptStatus, plan: ResumePlan) -> None:
    """The attempt is recorded but its pod was never seen: (re)create it with a fresh plan.

    The plan is recomputed because a checkpoint may have turned Invalid since the record was
    written; the record is updated first so status always names the pod's real resume point.
    """
    ref = checkpoint_ref(plan.target, b.state.store_root)
    if record.resumed_from != ref:
        b.status.attempts = [
            *b.status.attempts[:-1],
            record.model_copy(update={"resumed_from": ref}),
        ]
    b.status.phase = "Pending"
    b.create, b.plan = record.attempt, plan
    text = f"attempt {record.attempt} resumes {_resume_text(ref)}"
    b.conditions(
        ("False", "AttemptPending", f"attempt {record.attempt} is pending"),
        ("True", "Restarted" if record.attempt else "AttemptStarted", text),
    )


def _observe(b: _Builder, record: AttemptStatus, pod: AttemptPod) -> None:
    """Mirror a pod that started running into the record and the run.

    A pod still Pending changes nothing: the conditions written when the attempt started
    (``Restarted``, with its resume point) stay, and seeing the new pod costs no write.
    """
    if pod.phase != "Running" or record.phase == "Running":
        return
    updated = record.model_copy(
        update={"phase": "Running", "start_time": pod.started_at or record.start_time}
    )
    b.status.attempts = [*b.status.attempts[:-1], updated]
    b.status.phase = "Running"
    text = f"attempt {pod.attempt} is running"
    b.conditions(("False", "AttemptRunning", text), ("True", "AttemptRunning", text))


def _close(
    record: AttemptStatus,
    phase: Literal["Succeeded", "Failed"],
    failure: Failure,
    end: datetime | None,
    now: datetime,
    action: restart.Action | None,
) -> AttemptStatus:
    return record.model_copy(
        update={
            "phase": phase,
            "end_time": (end or now).replace(microsecond=0),
            "exit_code": failure.exit_code,
            "reason": failure.reason,
            "message": failure.message,
            "action": action,
        }
    )


def _succeeded(b: _Builder, record: AttemptStatus, pod: AttemptPod) -> None:
    ok = Failure(exit_code=pod.failure.exit_code if pod.failure.exit_code is not None else 0)
    b.status.attempts = [
        *b.status.attempts[:-1],
        _close(record, "Succeeded", ok, pod.finished_at, b.state.now, None),
    ]
    b.status.phase = "Succeeded"
    b.status.next_attempt_after = None
    text = f"attempt {record.attempt} succeeded"
    b.notes.append(Note("Normal", "Succeeded", text))
    b.conditions(("True", "Succeeded", text), ("False", "Succeeded", text))


def _failed(
    b: _Builder,
    spec: TrainingRunSpec,
    record: AttemptStatus,
    failure: Failure,
    end: datetime | None,
    plan: ResumePlan,
) -> None:
    st = b.status
    resumed = record.resumed_from.step if record.resumed_from else None
    decision = restart.decide(
        spec.restart_policy,
        failure,
        attempt=record.attempt,
        restarts=st.restarts,
        attempts_without_progress=st.attempts_without_progress,
        made_progress=made_progress(b.state.checkpoints, record.attempt, resumed),
    )
    st.attempts = [
        *st.attempts[:-1],
        _close(record, "Failed", failure, end, b.state.now, decision.action),
    ]
    st.restarts = decision.restarts
    st.attempts_without_progress = decision.attempts_without_progress
    if not decision.restart and record.attempt + 1 in b.state.pods:
        # The next pod was created before a crash lost this decision, and the inputs have
        # changed since (a checkpoint's verification finished): what happened stands.
        spent = 1 if decision.action == "Retry" else 0
        decision = replace(decision, restart=True, delay_s=0, restarts=decision.restarts + spent)
        st.restarts = decision.restarts
    if not decision.restart:
        b.notes.append(Note("Warning", decision.reason, decision.message))
        b.fail(decision.reason, decision.message)
        return
    b.notes.append(Note("Warning", "AttemptFailed", decision.message))
    if decision.delay_s > 0:
        st.phase = "BackingOff"
        st.next_attempt_after = b.state.now + timedelta(seconds=decision.delay_s)
        b.wake_at = st.next_attempt_after
        _backing_off_conditions(b, record.attempt + 1, st.next_attempt_after)
    else:
        _start(b, record.attempt + 1, plan)


def _backing_off_conditions(b: _Builder, attempt: int, when: datetime) -> None:
    text = f"attempt {attempt} starts at {when.isoformat(timespec='milliseconds')}"
    b.conditions(("False", "BackingOff", text), ("True", "BackingOff", text))


def pods_by_attempt(pods: Iterable[AttemptPod], run_uid: str) -> dict[int, AttemptPod]:
    """The run's own attempt pods: a same-named pod of a deleted namesake run is not ours."""
    return {p.attempt: p for p in pods if p.owner_uid == run_uid}
