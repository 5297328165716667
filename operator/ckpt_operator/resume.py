"""Which checkpoint the next attempt resumes from: a pure function of the run's checkpoints.

Invariants 2 and 3: only committed *and verified* (Ready) checkpoints that are not being
deleted qualify, and the target is the one with the greatest step across *all* attempts (a tie
goes to the later attempt). Weights-only exports cannot resume training, so they never qualify.
"""

from __future__ import annotations

from collections.abc import Iterable

from ckpt_operator.records import CheckpointInfo


def resume_candidates(checkpoints: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """Every checkpoint a new attempt may resume from, best first."""
    usable = [c for c in checkpoints if c.ready and c.kind == "full"]
    return sorted(usable, key=lambda c: (c.step, c.attempt), reverse=True)


def resume_target(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint the next attempt resumes from, or None to start from scratch."""
    candidates = resume_candidates(checkpoints)
    return candidates[0] if candidates else None
