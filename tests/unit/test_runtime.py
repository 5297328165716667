"""The operator's shared state forgets a deleted run entirely."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from ckpt_operator.handlers.runtime import Runtime


def test_forget_drops_every_per_run_record_and_keeps_the_others() -> None:
    state = Runtime()
    gone, kept = ("ns", "gone"), ("ns", "kept")
    for key in (gone, kept):
        state.last_scan[key] = 1.0
        state.flagged[key] = {("pod", datetime(2025, 1, 1, tzinfo=UTC))}
        state.unsafe[key] = {"escape"}
        state.bad_reports[key] = {("pod", "x")}
        state.store_errors[key] = "denied"
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
