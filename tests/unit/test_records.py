"""One record per checkpoint's files: mismatched and duplicate Checkpoints own nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ckpt_operator.api.models import MAX_STEP
from ckpt_operator.policy.deletion import deletion_blockers
from ckpt_operator.policy.records import DUPLICATE, MISMATCH, aliases, not_record, record_of
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.run import RunView
from tests.unit.factories import checkpoint as ckpt

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(c: CheckpointInfo, seconds: float, **fields: Any) -> CheckpointInfo:
    """``c`` created ``seconds`` after T0, with ``fields`` replaced."""
    return replace(c, created=T0 + timedelta(seconds=seconds), **fields)


def test_a_checkpoint_whose_path_contradicts_its_spec_is_a_mismatch() -> None:
    five = ckpt(5)
    assert not_record(five, [five]) is None
    for lie in (
        replace(five, step=6),
        replace(five, attempt=1),
        replace(five, format="tar"),
        replace(five, kind="weights"),
        replace(five, path=five.path + "/"),
    ):
        problem = not_record(lie, [five, lie])
        assert problem is not None and problem.reason == MISMATCH, lie
        assert lie.expected_path is not None and repr(lie.expected_path) in problem.message
    out_of_range = replace(five, step=MAX_STEP + 1)
    problem = not_record(out_of_range, [])
    assert problem is not None and "out of range" in problem.message
    assert replace(five, step=-1).expected_path is None


def test_the_sdk_named_record_wins_then_the_oldest_then_the_name() -> None:
    canonical = at(ckpt(5), 10)
    early_copy = at(ckpt(5), 0, name="copy")
    later_copy = at(ckpt(5), 20, name="another")
    group = [canonical, early_copy, later_copy]
    assert [record_of(c, group) for c in group] == [canonical] * 3
    for c in (early_copy, later_copy):
        problem = not_record(c, group)
        assert problem is not None and problem.reason == DUPLICATE
        assert problem.record == canonical.name and canonical.name in problem.message
    # Without the SDK's name, the oldest; at the same instant, the first name.
    assert record_of(later_copy, [early_copy, later_copy]) == early_copy
    twin = at(ckpt(5), 0, name="aaa")
    assert record_of(early_copy, [early_copy, twin]) == twin


def test_an_inconsistent_checkpoint_never_displaces_the_record() -> None:
    five = at(ckpt(5), 10)
    liar = at(ckpt(5), 0, name="liar", step=7)
    assert not_record(five, [five, liar]) is None
    assert aliases(five, [five, liar]) == {five.name, "liar"}


def test_protection_through_a_duplicate_holds_the_files() -> None:
    """Safe deletion: the run resumes through the duplicate's name, so the record's files
    must stay even though the record itself is not named as the target."""
    five, six = at(ckpt(5), 0), at(ckpt(6), 0)
    dup = at(ckpt(5), 5, name="dup")
    run = RunView(name="r", resume_targets=frozenset({"dup"}))
    blockers = deletion_blockers(five, run=run, siblings=[five, six, dup], consumers=[], now=T0)
    assert blockers == ["resume target of a pending or running attempt of r"]
    newest_dup = at(ckpt(6), 5, name="dup6")
    gone_newest = replace(six, phase="Invalid")
    blockers = deletion_blockers(
        gone_newest, run=RunView(name="r"), siblings=[five, newest_dup], consumers=[], now=T0
    )
    assert blockers == ["newest Ready checkpoint of r"]


group_members = st.tuples(
    st.sampled_from(["r-step-5-a0", "a", "b", "c"]),
    st.integers(0, 3),
    st.sampled_from([5, 6]),
)


@given(st.lists(group_members, min_size=1, max_size=6, unique_by=lambda m: m[0]))
def test_exactly_one_consistent_checkpoint_is_the_record(
    members: list[tuple[str, int, int]],
) -> None:
    group = [at(ckpt(5), created, name=name, step=step) for name, created, step in members]
    consistent = [c for c in group if c.consistent]
    records = {c.name for c in group if not_record(c, group) is None}
    assert len(records) == (1 if consistent else 0)
    assert all(record_of(c, group) in (None, *consistent) for c in group)


def test_every_format_and_kind_the_layout_knows_is_a_consistent_record() -> None:
    """A DCP checkpoint registered by the SDK is a record like any other, not a mismatch."""
    for fmt in ("dir", "tar", "dcp"):
        for kind in ("full", "weights"):
            name = CheckpointName(5, 0, fmt, kind)
            info = replace(ckpt(5), format=fmt, kind=kind, path=name.path)
            assert info.consistent, (fmt, kind)
            assert not_record(info, [info]) is None
