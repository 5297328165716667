"""A TrainingRun's attempts: the state machine.

Everything here is pure: :func:`next_step` maps what the controller knows (the run's spec and
status, its attempt pods, its checkpoints, the clock) to the status the run should have, the
pods that should exist and those that must go. The Kopf handler only feeds it and carries out
the result, so after an operator crash at any instant the same inputs give the same answer
(crash convergence).

Status is the record that survives restarts. The state is read from it like this (an
attempt's workers are taken together, see :mod:`~ckpt_operator.policy.gang`):

* no attempts yet                          -> start attempt 0;
* last attempt open (Pending/Running):
    - all workers Succeeded                -> the run Succeeded;
    - a worker Failed, or vanished after the gang ran, or the gang did not start within
      ``startupTimeoutSeconds``            -> apply the restart policy: FailRun, or close it
      and start the next one (at once, or BackingOff until ``nextAttemptAfter``);
    - workers missing, never seen running  -> (re)create them (the status write that records
      an attempt and the pods' creation go out together; a crash between them leaves this
      state, and pod names are deterministic, so creating one twice is a harmless conflict);
* last attempt closed, run BackingOff      -> start the next one when ``nextAttemptAfter``
  has passed and no worker of an earlier attempt is still alive.

Workers of attempts that ended and still run are deleted, at every step until they are gone,
and the next attempt's pods are created only then: two gangs never hold the GPUs or the
rendezvous port at once, and no half gang is left running.

Counters (``restarts``, ``attemptsWithoutProgress``) change in the same status write that
closes an attempt, so no failure is ever counted twice or lost. If the next pods were created
but the write that decided them was lost, the decision is made again from the same status and
the existing pods are adopted with the resume point they really have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from ckpt_operator.api import names
from ckpt_operator.api.models import AttemptStatus, CheckpointRef, TrainingRunSpec
from ckpt_operator.policy import gang, restart
from ckpt_operator.policy.resume import (
    Resume,
    ResumePlan,
    checkpoint_ref,
    made_progress,
    resume_plan,
)
from ckpt_operator.policy.run_state import (
    FAILED,
    INVALID_SPEC,
    Note,
    RunState,
    Step,
    StepBuilder,
    is_terminal,
)
from ckpt_operator.views.pod import AttemptPod, Failure

__all__ = ["RunState", "Step", "next_step", "own_pods"]


def next_step(state: RunState) -> Step:
    """The status the run should have now, the pods that should exist, the events to post."""
    b = StepBuilder(state)
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
        _open_attempt(b, spec, record, plan)
    elif st.phase == "BackingOff" and st.next_attempt_after and state.now < st.next_attempt_after:
        b.wake_at = st.next_attempt_after
        _backing_off_conditions(b, record.attempt + 1, st.next_attempt_after)
    else:
        _start(b, record.attempt + 1, plan)
    return b.step()


def _open_attempt(
    b: StepBuilder, spec: TrainingRunSpec, record: AttemptStatus, plan: ResumePlan
) -> None:
    workers = b.gangs.get(record.attempt, {})
    found = gang.outcome(workers, b.num_nodes)
    if found.state == "Failed":
        _failed(b, spec, record, found.failure, found.finished_at, plan, found.cause)
    elif found.state == "Missing":
        if record.phase == "Running":
            gone = gang.deleted(found.cause, b.num_nodes)
            _failed(b, spec, record, gone, None, plan, found.cause)
        else:
            _ensure_workers(b, record, plan, found.missing)
    elif found.state == "Succeeded":
        _succeeded(b, record, found)
    elif found.state == "Running":
        _observe(b, record, gang.started_at(workers))
    elif spec.startup_timeout_seconds is not None and record.start_time is not None:
        deadline = record.start_time + timedelta(seconds=spec.startup_timeout_seconds)
        if b.state.now < deadline:
            b.wake_at = deadline
            return
        failure = gang.startup_timeout(
            workers, b.num_nodes, spec.startup_timeout_seconds, b.state.name
        )
        _failed(b, spec, record, failure, None, plan, found.cause)


def _resume_text(ref: CheckpointRef | None) -> str:
    if ref is None:
        return "from scratch (no Ready checkpoint)"
    return f"from {ref.name} (step {ref.step}, attempt {ref.attempt})"


def _workers_text(b: StepBuilder) -> str:
    return "" if b.num_nodes == 1 else f" with {b.num_nodes} workers"


def _alive_before(b: StepBuilder, attempt: int) -> list[AttemptPod]:
    return sorted((p for p in b.state.pods if p.attempt < attempt and p.live), key=lambda p: p.name)


def _start(b: StepBuilder, attempt: int, plan: ResumePlan) -> None:
    """Record a new attempt; the controller creates its workers along with this status write.

    Workers that exist already (created just before a crash or a lost write race) are adopted:
    their resume point is recorded and given to the missing ones, so status and every worker
    agree. Nothing starts while a worker of an earlier attempt is alive.
    """
    st = b.status
    existing = b.gangs.get(attempt, {})
    alive = _alive_before(b, attempt)
    if alive and not existing:
        st.phase = "BackingOff"
        text = (
            f"attempt {attempt} starts when {len(alive)} worker(s) of earlier attempts have "
            f"stopped: {', '.join(p.name for p in alive[:4])}"
        )
        b.conditions(("False", "TearingDown", text), ("True", "TearingDown", text))
        return
    resume = (
        Resume.of_pod(next(iter(existing.values())))
        if existing
        else Resume.from_plan(plan, b.state.store_root)
    )
    st.attempts = [
        *st.attempts,
        AttemptStatus(
            attempt=attempt,
            pod=names.attempt_pod_name(b.state.name, attempt, 0, b.num_nodes),
            start_time=b.state.now.replace(microsecond=0),
            phase="Pending",
            resumed_from=resume.target,
        ),
    ]
    st.attempt = attempt
    st.next_attempt_after = None
    st.phase = "Pending"
    _create(b, attempt, tuple(r for r in range(b.num_nodes) if r not in existing), resume)
    text = f"attempt {attempt} resumes {_resume_text(resume.target)}{_workers_text(b)}"
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


def _create(b: StepBuilder, attempt: int, ranks: tuple[int, ...], resume: Resume) -> None:
    if ranks:
        b.create, b.ranks, b.resume = attempt, ranks, resume


def _ensure_workers(
    b: StepBuilder, record: AttemptStatus, plan: ResumePlan, missing: tuple[int, ...]
) -> None:
    """The attempt is recorded but workers were never seen: (re)create them.

    With no worker at all the plan is recomputed (a checkpoint may have turned Invalid since
    the record was written) and the record updated first, so status always names the real
    resume point; otherwise the missing workers get the one the others have.
    """
    existing = b.gangs.get(record.attempt, {})
    if existing:
        resume = Resume.of_pod(next(iter(existing.values())))
    else:
        resume = Resume.from_plan(plan, b.state.store_root)
        if record.resumed_from != resume.target:
            b.status.attempts = [
                *b.status.attempts[:-1],
                record.model_copy(update={"resumed_from": resume.target}),
            ]
    b.status.phase = "Pending"
    _create(b, record.attempt, missing, resume)
    text = f"attempt {record.attempt} resumes {_resume_text(resume.target)}{_workers_text(b)}"
    b.conditions(
        ("False", "AttemptPending", f"attempt {record.attempt} is pending"),
        ("True", "Restarted" if record.attempt else "AttemptStarted", text),
    )


def _observe(b: StepBuilder, record: AttemptStatus, started: datetime | None) -> None:
    """Mirror a gang that started running into the record and the run.

    Workers still Pending change nothing: the conditions written when the attempt started
    (``Restarted``, with its resume point) stay, and seeing the new pods costs no write.
    """
    if record.phase == "Running":
        return
    updated = record.model_copy(
        update={"phase": "Running", "start_time": started or record.start_time}
    )
    b.status.attempts = [*b.status.attempts[:-1], updated]
    b.status.phase = "Running"
    text = f"attempt {record.attempt} is running{_workers_text(b)}"
    b.conditions(("False", "AttemptRunning", text), ("True", "AttemptRunning", text))


def _close(
    b: StepBuilder,
    record: AttemptStatus,
    phase: Literal["Succeeded", "Failed"],
    failure: Failure,
    end: datetime | None,
    action: restart.Action | None,
    cause: int = 0,
) -> AttemptStatus:
    update: dict[str, object] = {
        "phase": phase,
        "end_time": (end or b.state.now).replace(microsecond=0),
        "exit_code": failure.exit_code,
        "reason": failure.reason,
        "message": failure.message,
        "action": action,
    }
    if b.num_nodes > 1:
        workers = b.gangs.get(record.attempt, {})
        update["pod"] = names.attempt_pod_name(b.state.name, record.attempt, cause, b.num_nodes)
        update["workers"] = gang.worker_statuses(workers, b.num_nodes, b.state.name, record.attempt)
    closed: AttemptStatus = record.model_copy(update=update)
    return closed


def _succeeded(b: StepBuilder, record: AttemptStatus, found: gang.Outcome) -> None:
    code = found.failure.exit_code
    ok = Failure(exit_code=code if code is not None else 0)
    b.status.attempts = [
        *b.status.attempts[:-1],
        _close(b, record, "Succeeded", ok, found.finished_at, None),
    ]
    b.status.phase = "Succeeded"
    b.status.next_attempt_after = None
    text = f"attempt {record.attempt} succeeded"
    b.notes.append(Note("Normal", "Succeeded", text))
    b.conditions(("True", "Succeeded", text), ("False", "Succeeded", text))


def _failed(
    b: StepBuilder,
    spec: TrainingRunSpec,
    record: AttemptStatus,
    failure: Failure,
    end: datetime | None,
    plan: ResumePlan,
    cause: int,
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
        preemptions=st.preemptions,
    )
    st.attempts = [
        *st.attempts[:-1],
        _close(b, record, "Failed", failure, end, decision.action, cause),
    ]
    st.restarts = decision.restarts
    st.attempts_without_progress = decision.attempts_without_progress
    st.preemptions = decision.preemptions
    if not decision.restart and record.attempt + 1 in b.gangs:
        # The next pods were created before a crash lost this decision, and the inputs have
        # changed since (a checkpoint's verification finished): what happened stands.
        retried, ignored = decision.action == "Retry", decision.action == "Ignore"
        decision = replace(
            decision,
            restart=True,
            delay_s=0,
            restarts=decision.restarts + retried,
            preemptions=decision.preemptions + ignored,
        )
        st.restarts, st.preemptions = decision.restarts, decision.preemptions
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


def _backing_off_conditions(b: StepBuilder, attempt: int, when: datetime) -> None:
    text = f"attempt {attempt} starts at {when.isoformat(timespec='milliseconds')}"
    b.conditions(("False", "BackingOff", text), ("True", "BackingOff", text))


def own_pods(pods: Iterable[AttemptPod], run_uid: str) -> list[AttemptPod]:
    """The run's own attempt pods: a same-named pod of a deleted namesake run is not ours."""
    return [p for p in pods if p.owner_uid == run_uid]
