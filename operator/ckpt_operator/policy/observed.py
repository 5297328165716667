"""Attached runs: attempts that another controller starts, numbered and observed here.

A TrainingRun with ``spec.workload`` creates no pod. A Job, a JobSet or a TrainJob creates them
and decides every restart and its budget; the pods opt in with the label ``ckpt.dev/run``.
Everything here is pure, in two halves:

**Admission** (:func:`attempt_key`, :func:`admit`), called by the mutating webhook for every
opted-in pod at creation. Pods with the same *key* form one attempt:

* with an attempt label (``spec.workload.attemptLabel``, or JobSet's
  ``jobset.sigs.k8s.io/restart-attempt`` when the pod has it) the key is its value, so every pod
  of one whole-gang restart is one attempt;
* a pod that replaces an earlier pod of the same owner and Job completion index (a Job's
  replacement after a failure: the index's next *pod generation*) gets a key of its own.

The first pod with a key that no open attempt has opens a new one: its number is one past the
highest ever recorded (never reused, so checkpoint names ``step-N.attempt-A`` never collide)
and it resumes from the newest Ready checkpoint at that moment (newest resume, verified
resume). The record is written to status *before* the pod is admitted, so its resume target is
protected from deletion before any pod can load it (safe deletion). Later pods with the key of
an open attempt join it with the same resume point, so a gang restarts from one step.

**Observation** (:func:`observe`), called by the per-run observer with the run's pods: an
attempt stays open while any of its pods may run (its resume target stays protected), its
first failure is recorded as soon as it is seen (the workload controller may delete the pod a
moment later), and it closes Succeeded or Failed once none of its pods is alive. The run's
phase follows its newest attempt; an attached run's ``Failed`` is not final: the workload's
controller may start another attempt.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ckpt_operator.api import conditions
from ckpt_operator.api.models import AttemptStatus, Condition, TrainingRunStatus, WorkerStatus
from ckpt_operator.policy.gang import POD_DELETED
from ckpt_operator.policy.resume import Resume, ResumePlan, checkpoint_ref, resume_plan
from ckpt_operator.policy.run_state import FAILED, PROGRESSING, READY, Note, Triple
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod
from ckpt_operator.views.workload import AdmittedPod

JOBSET_RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"
OPEN = ("Pending", "Running")
NO_POD_GRACE = timedelta(seconds=120)
"""An attempt recorded at admission whose pods never appear (the creation failed after us and
was not retried) is closed after this long, so it stops protecting its resume target."""

_LATEST = datetime.max.replace(tzinfo=UTC)


# --- admission ------------------------------------------------------------------------------


def attempt_key(pod: AdmittedPod, known: Iterable[AttemptPod], attempt_label: str | None) -> str:
    """What groups ``pod`` with the other pods of its attempt (see the module docstring).

    ``known`` are the run's pods admitted before; a pod is never among them (it does not
    exist yet), so admitting the same pod twice gives the same key.
    """
    label = attempt_label or (
        JOBSET_RESTART_ATTEMPT if JOBSET_RESTART_ATTEMPT in pod.labels else ""
    )
    wave = f"{label}={pod.labels.get(label, '')}" if label else f"owner={pod.owner_uid}"
    earlier = sum(
        1
        for p in known
        if (p.owner_uid or "") == pod.owner_uid and p.completion_index == pod.completion_index
    )
    if earlier == 0:
        return wave
    index = "" if pod.completion_index is None else pod.completion_index
    return f"{wave}/{pod.owner_uid}/{index}/{earlier}"


@dataclass(frozen=True)
class Admission:
    """What an admitted pod is told, and the status to write before it is admitted."""

    attempt: int
    resume: Resume
    status: TrainingRunStatus | None = None
    """The status recording a new attempt; None when the pod joins an open one."""

    @property
    def opened(self) -> bool:
        return self.status is not None


def admit(
    status: TrainingRunStatus,
    key: str,
    pod: AdmittedPod,
    checkpoints: Iterable[CheckpointInfo],
    store_root: str,
    now: datetime,
) -> Admission:
    """Join the open attempt with ``key``, or open the next one resuming from the newest."""
    plan = resume_plan(checkpoints)
    for record in reversed(status.attempts):
        if record.key == key and record.phase in OPEN:
            return Admission(record.attempt, _joined(record, plan, store_root))
    attempt = max((r.attempt for r in status.attempts), default=-1) + 1
    resume = Resume.from_plan(plan, store_root)
    record = AttemptStatus(
        attempt=attempt,
        pod=pod.display_name,
        start_time=now.replace(microsecond=0),
        phase="Pending",
        resumed_from=resume.target,
        key=key,
    )
    updated = status.model_copy(deep=True)
    updated.attempts = [*updated.attempts, record]
    updated.attempt = attempt
    return Admission(attempt, resume, updated)


def _joined(record: AttemptStatus, plan: ResumePlan, store_root: str) -> Resume:
    """The attempt's resume point; fallbacks: the candidates older than it that still qualify."""
    target = record.resumed_from
    if target is None:
        return Resume()
    older = tuple(
        layout.join_uri(store_root, c.path)
        for c in plan.candidates
        if (c.step, c.attempt) < (target.step, target.attempt)
    )
    return Resume(target, (target.uri, *older))


# --- observation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The status an attached run should show, and the events to post once it is written."""

    status: TrainingRunStatus
    notes: tuple[Note, ...] = ()
    wake_at: datetime | None = None


@dataclass
class _Builder:
    status: TrainingRunStatus
    now: datetime
    generation: int | None
    notes: list[Note] = field(default_factory=list)
    wake_at: datetime | None = None

    def conditions(self, ready: Triple, progressing: Triple, failed: Triple) -> None:
        now = self.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        current = [c.wire() for c in self.status.conditions]
        for type_, (status, reason, message) in (
            (READY, ready),
            (PROGRESSING, progressing),
            (FAILED, failed),
        ):
            current = conditions.set_condition(
                current, type_, status, reason, message, self.generation, now
            )
        self.status.conditions = [Condition.model_validate(c) for c in current]

    def wake(self, when: datetime) -> None:
        self.wake_at = when if self.wake_at is None else min(self.wake_at, when)


def observe(
    status: TrainingRunStatus,
    pods: Sequence[AttemptPod],
    checkpoints: Iterable[CheckpointInfo],
    store_root: str,
    now: datetime,
    generation: int | None = None,
    invalid: tuple[str, str] | None = None,
) -> Observed:
    """Mirror the run's pods into its attempts, and the newest attempt into the run.

    ``invalid`` (reason, message): the run cannot be served (its store is not allowed); the
    webhook refuses its pods, and the run shows Failed until its spec is fixed.
    """
    b = _Builder(status.model_copy(deep=True), now, generation)
    b.status.observed_generation = generation
    if invalid is not None:
        b.status.phase = "Failed"
        triple: Triple = ("False", *invalid)
        b.conditions(triple, triple, ("True", *invalid))
        return Observed(b.status)
    b.status.latest_checkpoint = checkpoint_ref(resume_plan(checkpoints).target, store_root)
    by_attempt: dict[int, list[AttemptPod]] = {}
    for pod in pods:
        by_attempt.setdefault(pod.attempt, []).append(pod)
    b.status.attempts = [
        _attempt(b, r, by_attempt.get(r.attempt, [])) if r.phase in OPEN else r
        for r in b.status.attempts
    ]
    b.status.restarts = max(0, len(b.status.attempts) - 1)
    _run_phase(b)
    return Observed(b.status, tuple(b.notes), b.wake_at)


def _attempt(b: _Builder, record: AttemptStatus, pods: list[AttemptPod]) -> AttemptStatus:
    update: dict[str, object] = {}
    failed = [p for p in pods if p.phase == "Failed"]
    seen_failure = record.exit_code is not None or record.reason is not None
    if failed and not seen_failure:
        first = min(failed, key=lambda p: (p.finished_at or _LATEST, p.name))
        update |= {
            "pod": first.name,
            "exit_code": first.failure.exit_code,
            "reason": first.failure.reason or "Failed",
            "message": first.failure.message,
        }
        seen_failure = True
    elif pods and not seen_failure and record.pod not in {p.name for p in pods}:
        update["pod"] = min(p.name for p in pods)  # the real name instead of generateName
    live = [p for p in pods if p.live]
    if live:
        running = record.phase == "Running" or any(p.phase == "Running" for p in live)
        update["phase"] = "Running" if running else "Pending"
        return record.model_copy(update=update)
    if not pods and record.phase == "Pending" and record.start_time is not None:
        deadline = record.start_time + NO_POD_GRACE
        if b.now < deadline:
            b.wake(deadline)
            return record
    closed = record.model_copy(update=update)
    end = max((p.finished_at for p in pods if p.finished_at), default=None)
    outcome: dict[str, object] = {"end_time": (end or b.now).replace(microsecond=0)}
    if seen_failure:
        outcome["phase"] = "Failed"
    elif pods and all(p.phase == "Succeeded" for p in pods):
        outcome |= {"phase": "Succeeded", "exit_code": 0}
    else:
        who = "its pods were" if record.phase == "Running" else "no pod of it was"
        outcome |= {
            "phase": "Failed",
            "reason": POD_DELETED,
            "message": f"{who} deleted before an outcome was seen",
        }
    if len(pods) > 1:
        outcome["workers"] = _workers(pods)
    closed = closed.model_copy(update=outcome)
    if closed.phase == "Failed":
        text = f"attempt {record.attempt} failed: {_describe(closed)}"
        b.notes.append(Note("Warning", "AttemptFailed", text))
    else:
        b.notes.append(Note("Normal", "Succeeded", f"attempt {record.attempt} succeeded"))
    return closed


def announcements(status: TrainingRunStatus, announced: Collection[int]) -> list[tuple[int, Note]]:
    """Events for attempts the webhook opened that have not been announced yet."""
    return [
        (
            r.attempt,
            Note(
                "Normal",
                "Restarted" if r.attempt else "Started",
                f"attempt {r.attempt} resumes {_resume_text(r)}",
            ),
        )
        for r in status.attempts
        if r.attempt not in announced
    ]


def _workers(pods: list[AttemptPod]) -> list[WorkerStatus]:
    ordered = sorted(pods, key=lambda p: (p.completion_index or 0, p.name))
    return [
        WorkerStatus(
            rank=rank,
            pod=p.name,
            phase=p.phase,
            exit_code=p.failure.exit_code,
            reason=p.failure.reason,
        )
        for rank, p in enumerate(ordered)
    ]


def _describe(record: AttemptStatus) -> str:
    parts = [f"exit code {record.exit_code}"] if record.exit_code is not None else []
    parts += [f"reason {record.reason}"] if record.reason else []
    return f"{record.pod}: {', '.join(parts) or 'no exit code or reason'}"


def _resume_text(record: AttemptStatus) -> str:
    ref = record.resumed_from
    if ref is None:
        return "from scratch (no Ready checkpoint)"
    return f"from {ref.name} (step {ref.step}, attempt {ref.attempt})"


def _run_phase(b: _Builder) -> None:
    st = b.status
    waiting = "the workload's controller decides whether another attempt starts"
    if not st.attempts:
        st.phase = "Pending"
        text = "waiting for pods labelled ckpt.dev/run to be admitted"
        b.conditions(
            ("False", "WaitingForPods", text), ("True", "WaitingForPods", text), _not_failed()
        )
        return
    # An attempt still open (pods of a Job's earlier generation) outranks a newer closed one.
    last = next((r for r in reversed(st.attempts) if r.phase in OPEN), st.attempts[-1])
    st.attempt = st.attempts[-1].attempt
    st.phase = last.phase
    if last.phase == "Pending":
        text = f"attempt {last.attempt} resumes {_resume_text(last)}"
        reason = "Restarted" if len(st.attempts) > 1 else "AttemptStarted"
        b.conditions(
            ("False", "AttemptPending", f"attempt {last.attempt} is pending"),
            ("True", reason, text),
            _not_failed(),
        )
    elif last.phase == "Running":
        text = f"attempt {last.attempt} is running"
        b.conditions(
            ("False", "AttemptRunning", text), ("True", "AttemptRunning", text), _not_failed()
        )
    elif last.phase == "Succeeded":
        text = f"attempt {last.attempt} succeeded"
        b.conditions(("True", "Succeeded", text), ("False", "Succeeded", text), _not_failed())
    else:
        text = f"attempt {last.attempt} failed: {_describe(last)}; {waiting}"
        b.conditions(
            ("False", "AttemptFailed", text),
            ("Unknown", "WaitingForWorkload", waiting),
            ("True", "AttemptFailed", text),
        )


def _not_failed() -> Triple:
    return ("False", "NoFailure", "the newest attempt has not failed")
