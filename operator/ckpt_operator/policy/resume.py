"""Which checkpoint the next attempt resumes from: a pure function of the run's checkpoints.

Verified resume: only committed *and verified* (Ready) checkpoints that are not being deleted
qualify. Newest resume: the target is the one with the greatest step across *all* attempts (a
tie goes to the later attempt). Weights-only exports cannot resume training, so they never qualify.

The functions take any iterable (a Kopf index's live store) and touch each element once, so a
restart costs no API request and O(n log k) work however many checkpoints the run holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from ckpt_operator.api.models import CheckpointRef
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod

MAX_CANDIDATES = 8
"""How many fallbacks ``CKPT_RESUME_CANDIDATES`` lists: enough to survive a few corrupt
checkpoints at load time, few enough that the pod's env stays small with 10,000 checkpoints."""


def unusable_reason(checkpoint: CheckpointInfo) -> str | None:
    """Why an attempt may not resume from it; None when it may (Ready, not Terminating, full)."""
    if checkpoint.kind != "full":
        return "weights-only export: no training state to resume"
    if checkpoint.terminating:
        return "Terminating: being deleted"
    if checkpoint.phase == "Pending":
        return "Pending: not verified yet"
    if checkpoint.phase != "Ready":
        return f"{checkpoint.phase}: failed verification"
    return None


def usable(checkpoint: CheckpointInfo) -> bool:
    """May an attempt resume from it (verified resume)."""
    return unusable_reason(checkpoint) is None


def _order(checkpoint: CheckpointInfo) -> tuple[int, int, str]:
    # The name breaks the (impossible in practice) tie of two objects for one step and attempt
    # deterministically, so every replica and every restart chooses the same target.
    return (checkpoint.step, checkpoint.attempt, checkpoint.name)


def newest_first(checkpoints: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """In the order resume candidates are tried, usable or not."""
    return sorted(checkpoints, key=_order, reverse=True)


def resume_candidates(
    checkpoints: Iterable[CheckpointInfo], limit: int | None = None
) -> list[CheckpointInfo]:
    """Checkpoints a new attempt may resume from, best first (at most ``limit`` of them)."""
    ok = (c for c in checkpoints if usable(c))
    if limit is None:
        return newest_first(ok)
    return heapq.nlargest(limit, ok, key=_order)


def resume_target(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint the next attempt resumes from, or None to start from scratch."""
    best = resume_candidates(checkpoints, limit=1)
    return best[0] if best else None


@dataclass(frozen=True)
class ResumePlan:
    """Where an attempt starts: the target and the fallbacks, newest first (target included)."""

    candidates: tuple[CheckpointInfo, ...] = ()

    @property
    def target(self) -> CheckpointInfo | None:
        return self.candidates[0] if self.candidates else None


def resume_plan(checkpoints: Iterable[CheckpointInfo], limit: int = MAX_CANDIDATES) -> ResumePlan:
    """The plan for a new attempt from the run's checkpoints as they are now."""
    return ResumePlan(tuple(resume_candidates(checkpoints, limit=limit)))


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
class Resume:
    """What every worker of one attempt is told in its env: the target and the fallbacks.

    All workers of an attempt get the same one, even when some are created after a crash and
    the run's checkpoints have changed meanwhile: then it is taken from a worker that exists.
    """

    target: CheckpointRef | None = None
    candidates: tuple[str, ...] = ()
    """URIs, newest first, the target's first."""

    @classmethod
    def from_plan(cls, plan: ResumePlan, store_root: str) -> Resume:
        uris = tuple(layout.join_uri(store_root, c.path) for c in plan.candidates)
        return cls(checkpoint_ref(plan.target, store_root), uris)

    @classmethod
    def of_pod(cls, pod: AttemptPod) -> Resume:
        return cls(pod.resumed_from, pod.resume_candidates)


def made_progress(
    checkpoints: Iterable[CheckpointInfo], attempt: int, resumed_step: int | None
) -> bool:
    """Did ``attempt`` produce a full checkpoint past the step it resumed from?

    A Ready checkpoint counts even while retention deletes it (it was produced); a Pending one
    counts too, because its verification may simply not have finished when the pod died, and
    failing a run for a checkpoint that turns out fine a second later would be wrong.
    """
    floor = -1 if resumed_step is None else resumed_step
    return any(
        c.attempt == attempt
        and c.kind == "full"
        and c.step > floor
        and c.phase in ("Ready", "Pending")
        for c in checkpoints
    )
