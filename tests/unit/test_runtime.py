"""The operator's shared state: it forgets a deleted run entirely, and protects every live
resume target however far the run's status lags."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from ckpt_operator.api.models import CheckpointRef
from ckpt_operator.handlers.runtime import Runtime
from ckpt_operator.views.pod import AttemptPod
from ckpt_operator.views.run import RunView


def test_forget_drops_every_per_run_record_and_keeps_the_others() -> None:
    state = Runtime()
    gone, kept = ("ns", "gone"), ("ns", "kept")
    for key in (gone, kept):
        state.last_scan[key] = 1.0
        state.flagged[key] = {("pod", datetime(2025, 1, 1, tzinfo=UTC))}
        state.unsafe[key] = {"escape"}
        state.bad_reports[key] = {("pod", "x")}
        state.store_errors[key] = "denied"
        state.resume_claims[key] = frozenset({"ckpt"})
    state.forget(gone)
    per_run = [
        getattr(state, f.name)
        for f in dataclasses.fields(state)
        if isinstance(getattr(state, f.name), dict)
    ]
    assert per_run, "Runtime keeps per-run dicts"
    for records in per_run:
        assert gone not in records
        assert kept in records


def _pod(attempt: int, target: str, **extra: Any) -> AttemptPod:
    ref = CheckpointRef(name=target, step=10, attempt=0, uri=f"file:///s/{target}")
    return AttemptPod(
        name=f"r-{attempt}", namespace="ns", run="r", attempt=attempt, resumed_from=ref, **extra
    )


def test_protected_adds_claimed_targets_and_those_of_live_workers() -> None:
    state = Runtime()
    run = RunView("r", "ns", resume_targets=frozenset({"in-status"}))
    state.resume_claims[("ns", "r")] = frozenset({"claimed"})
    pods = [
        _pod(3, "in-pod"),
        _pod(2, "ended", phase="Failed"),
        _pod(1, "going", terminating=True),
    ]
    protected = state.protected(run, pods)
    assert protected.resume_targets == {"in-status", "claimed", "in-pod"}
    assert state.protected(RunView("r", "ns"), []).resume_targets == {"claimed"}
    assert state.protected(RunView("other", "ns"), []).resume_targets == frozenset()
