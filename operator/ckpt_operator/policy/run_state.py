"""What the attempt state machine reads and writes: its input, its output, and the working
copy of the run's status it fills in while deciding (see :mod:`~ckpt_operator.policy.attempts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ckpt_operator.api import conditions
from ckpt_operator.api.models import Condition, TrainingRunSpec, TrainingRunStatus
from ckpt_operator.policy import gang
from ckpt_operator.policy.resume import Resume
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod

READY, PROGRESSING, FAILED = "Ready", "Progressing", "Failed"

# Reasons for bad input. A run failed for one of these recovers when its spec is fixed.
INVALID_SPEC = "InvalidSpec"
INVALID_TEMPLATE = "InvalidTemplate"
STORE_NOT_ALLOWED = "StoreNotAllowed"
RECOVERABLE = frozenset({INVALID_SPEC, INVALID_TEMPLATE, STORE_NOT_ALLOWED})

Triple = tuple[conditions.Status, str, str]
NOT_FAILED: Triple = ("False", "NoFailure", "no attempt has failed the run")


@dataclass(frozen=True)
class RunState:
    """Everything :func:`next_step` decides on."""

    name: str
    namespace: str
    generation: int | None
    spec: TrainingRunSpec | None
    status: TrainingRunStatus
    pods: Sequence[AttemptPod]
    """This run's attempt pods (only those it owns), of every attempt."""
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
    """The attempt whose workers ``ranks`` must be created, along with writing ``status``."""
    ranks: tuple[int, ...] = ()
    resume: Resume = field(default_factory=Resume)
    """What the created workers are told: the same for every worker of the attempt."""
    delete: tuple[str, ...] = ()
    """Pods of attempts that ended and are still alive: torn down now."""
    notes: tuple[Note, ...] = ()
    wake_at: datetime | None = None
    """Look again at this time even if nothing happens (backoff, startup timeout)."""


def is_terminal(status: TrainingRunStatus) -> bool:
    """Succeeded, or Failed for a reason other than input the user can still fix."""
    if status.phase == "Succeeded":
        return True
    if status.phase != "Failed":
        return False
    failed = next((c for c in status.conditions if c.type == FAILED), None)
    return failed is None or failed.reason not in RECOVERABLE


class StepBuilder:
    """Mutable working copy of the status while one step is computed."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.num_nodes = state.spec.num_nodes if state.spec is not None else 1
        self.gangs = gang.by_attempt(state.pods)
        self.status = state.status.model_copy(deep=True)
        self.status.observed_generation = state.generation
        self.notes: list[Note] = []
        self.create: int | None = None
        self.ranks: tuple[int, ...] = ()
        self.resume = Resume()
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

    def stale(self) -> tuple[str, ...]:
        """Live pods of attempts that have ended (not of one recorded later, or not yet)."""
        attempts = self.status.attempts
        last = attempts[-1] if attempts else None
        current = last.attempt if last and last.phase in ("Pending", "Running") else None
        newest = last.attempt if last else -1
        return tuple(
            sorted(
                p.name
                for p in self.state.pods
                if p.live and not p.terminating and p.attempt <= newest and p.attempt != current
            )
        )

    def step(self) -> Step:
        return Step(
            status=self.status,
            create=self.create,
            ranks=self.ranks,
            resume=self.resume,
            delete=self.stale(),
            notes=tuple(self.notes),
            wake_at=self.wake_at,
        )
