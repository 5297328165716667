"""A TrainingRun's attempts: the state machine.

Everything here is pure: :func:`next_step` maps what the controller knows (the run's spec and
status, its attempt pods, its checkpoints, the clock) to the status the run should have and the
pod that should exist. The Kopf handler only feeds it and carries out the result, so after an
operator crash at any instant the same inputs give the same answer (crash convergence).

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from ckpt_operator.api import conditions, names
from ckpt_operator.api.models import (
    AttemptStatus,
    CheckpointRef,
    Condition,
    TrainingRunSpec,
    TrainingRunStatus,
)
from ckpt_operator.policy import restart
from ckpt_operator.policy.resume import ResumePlan, made_progress, resume_plan
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod, Failure

READY, PROGRESSING, FAILED = "Ready", "Progressing", "Failed"
OUR_CONDITIONS = (READY, PROGRESSING, FAILED)

# Reasons for bad input. A run failed for one of these recovers when its spec is fixed.
INVALID_SPEC = "InvalidSpec"
INVALID_TEMPLATE = "InvalidTemplate"
STORE_NOT_ALLOWED = "StoreNotAllowed"
RECOVERABLE = frozenset({INVALID_SPEC, INVALID_TEMPLATE, STORE_NOT_ALLOWED})

POD_DELETED = "PodDeleted"

Triple = tuple[conditions.Status, str, str]
NOT_FAILED: Triple = ("False", "NoFailure", "no attempt has failed the run")


def checkpoint_ref(checkpoint: CheckpointInfo | None, store_root: str) -> CheckpointRef | None:
    if checkpoint is None:
        return None
    return CheckpointRef(
        name=checkpoint.name,
        step=checkpoint.step,
        attempt=checkpoint.attempt,
        uri=layout.join_uri(store_root, checkpoint.path),
    )


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
