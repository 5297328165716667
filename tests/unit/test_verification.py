"""Checkpoints still without a verdict long after registration are verified again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ckpt_operator.policy.verification import STALLED_AFTER, stalled
from tests.unit.factories import checkpoint as ckpt

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_only_old_checkpoints_without_a_verdict_are_stalled() -> None:
    old = NOW - STALLED_AFTER - timedelta(seconds=1)
    young = NOW - STALLED_AFTER + timedelta(seconds=1)
    waiting = replace(ckpt(1), phase="Pending", created=old)
    cases = [
        waiting,
        replace(waiting, name="young", created=young),
        replace(waiting, name="ready", phase="Ready"),
        replace(waiting, name="invalid", phase="Invalid"),
        replace(waiting, name="deleting", phase="Deleting"),
        replace(waiting, name="terminating", terminating=True),
        replace(waiting, name="unknown-age", created=None),
    ]
    assert stalled(cases, NOW) == [waiting]


def test_a_checkpoint_queued_for_verification_is_not_stalled() -> None:
    waiting = replace(ckpt(1), phase="Pending", created=NOW - 2 * STALLED_AFTER)
    queued = replace(waiting, name="queued")
    assert stalled([waiting, queued], NOW, {(queued.namespace, queued.name)}) == [waiting]
