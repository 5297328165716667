"""The operator's shared state: it forgets a deleted run entirely, and protects every live
resume target however far the run's status lags."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

from ckpt_operator import metrics
from ckpt_operator.api.models import CheckpointRef
from ckpt_operator.handlers.runtime import VERIFY_CONCURRENCY, RecentlyDeleted, Runtime
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


def test_verifications_beyond_the_slots_wait_and_count_as_queued() -> None:
    async def scenario() -> None:
        state = Runtime()
        inside, peak, release = 0, 0, asyncio.Event()

        async def verify(name: str) -> None:
            nonlocal inside, peak
            async with state.verification("ns", name):
                inside += 1
                peak = max(peak, inside)
                await release.wait()
                inside -= 1
                if name == "c0":
                    raise RuntimeError("a failed verification frees its slot too")

        pending = metrics.VERIFICATIONS_PENDING._value.get()
        tasks = [asyncio.create_task(verify(f"c{i}")) for i in range(VERIFY_CONCURRENCY + 5)]
        await asyncio.sleep(0.01)
        assert inside == VERIFY_CONCURRENCY
        assert len(state.verifying) == VERIFY_CONCURRENCY + 5
        assert metrics.VERIFICATIONS_PENDING._value.get() == pending + VERIFY_CONCURRENCY + 5
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert peak == VERIFY_CONCURRENCY
        assert not state.verifying
        assert metrics.VERIFICATIONS_PENDING._value.get() == pending

    asyncio.run(scenario())


def test_recently_deleted_forgets_after_keep_s_counting_from_the_latest_note(
    monkeypatch: Any,
) -> None:
    clock = [100.0]
    monkeypatch.setattr("ckpt_operator.handlers.runtime.time.monotonic", lambda: clock[0])
    recent = RecentlyDeleted(keep_s=10)
    recent.note("ns", "a")
    clock[0] = 103
    recent.note("ns", "b")
    clock[0] = 106
    recent.note("ns", "a")  # noted again: kept 10 s from now, behind "b"
    clock[0] = 114
    recent.note("ns", "c")  # "b" expires here, though "a" was noted first
    assert ("ns", "a") in recent and ("ns", "c") in recent
    assert ("ns", "b") not in recent
    assert list(recent._when) == [("ns", "a"), ("ns", "c")], "expired entries are dropped"
    clock[0] = 117
    recent.note("ns", "d")
    assert ("ns", "a") not in recent
    assert list(recent._when) == [("ns", "c"), ("ns", "d")]
