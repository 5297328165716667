"""The deletion policy (safe deletion) as a pure function: examples and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api import names
from ckpt_operator.policy.consumers import seconds_until_change, selector_matches
from ckpt_operator.policy.deletion import deletion_blockers, newest_protected
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import ConsumerView, last_report_time
from ckpt_operator.views.run import RunView
from tests.unit.factories import checkpoint as ckpt

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def consumer(name: str, loaded: int | None, ago_s: float = 1.0, live: bool = True) -> ConsumerView:
    return ConsumerView(name, {}, loaded, NOW - timedelta(seconds=ago_s), live)


RUN = RunView(name="r", namespace="ns", report_timeout_s=60)


def test_consumer_must_report_a_greater_step() -> None:
    five, six = ckpt(5), ckpt(6)
    siblings = [five, six]
    at_five = deletion_blockers(
        five, run=RUN, siblings=siblings, consumers=[consumer("c", 5)], now=NOW
    )
    assert at_five == ["consumer c has loaded step 5, needs > 5"]
    assert not deletion_blockers(
        five, run=RUN, siblings=siblings, consumers=[consumer("c", 6)], now=NOW
    )
    silent_now = deletion_blockers(
        five, run=RUN, siblings=siblings, consumers=[consumer("c", None)], now=NOW
    )
    assert "nothing yet" in silent_now[0]


def test_silent_and_finished_consumers_stop_blocking() -> None:
    five, six = ckpt(5), ckpt(6)
    silent = consumer("c", 1, ago_s=61)
    done = consumer("d", 1, live=False)
    assert not deletion_blockers(
        five, run=RUN, siblings=[five, six], consumers=[silent, done], now=NOW
    )
    assert seconds_until_change(five.step, [consumer("c", 1, ago_s=50)], NOW, 60) == 10


def test_newest_ready_and_resume_target_are_protected_unless_forced() -> None:
    cks = [ckpt(1), ckpt(2), ckpt(3)]
    run = RunView(name="r", resume_targets=frozenset({cks[0].name}))
    assert deletion_blockers(cks[2], run=run, siblings=cks, consumers=[], now=NOW) == [
        "newest Ready checkpoint of r"
    ]
    assert deletion_blockers(cks[0], run=run, siblings=cks, consumers=[], now=NOW) == [
        "resume target of a pending or running attempt of r"
    ]
    assert not deletion_blockers(cks[1], run=run, siblings=cks, consumers=[], now=NOW)
    forced = CheckpointInfo(**{**cks[2].__dict__, "force_delete": True})
    assert not deletion_blockers(
        forced, run=run, siblings=cks, consumers=[consumer("c", None)], now=NOW
    )


def test_protections_lapse_with_the_run_but_consumers_still_block() -> None:
    cks = [ckpt(1), ckpt(2)]
    gone_run = RunView(name="r", terminating=True, resume_targets=frozenset({cks[1].name}))
    for run in (gone_run, None):
        assert not deletion_blockers(cks[1], run=run, siblings=cks, consumers=[], now=NOW)
        assert deletion_blockers(
            cks[1], run=run, siblings=cks, consumers=[consumer("c", 2)], now=NOW
        )


def test_a_terminating_newest_stays_newest_until_a_newer_one_is_verified() -> None:
    old = ckpt(1)
    newest = ckpt(2, terminating=True)
    pending = ckpt(3, phase="Pending")
    assert newest_protected([old, newest, pending]) == {newest.name}
    assert newest_protected([old, newest, ckpt(3)]) == {ckpt(3).name}
    weights = ckpt(4, kind="weights")
    assert newest_protected([old, weights]) == {old.name, weights.name}


def test_views_from_bodies() -> None:
    body = {
        "metadata": {"name": "r-step-2-a0", "namespace": "ns", "deletionTimestamp": "x"},
        "spec": {"run": "r", "step": 2, "attempt": 0, "path": "step-0000000002.attempt-0"},
        "status": {
            "phase": "Deleting",
            "conditions": [{"type": "Verified", "status": "True"}],
        },
    }
    view = CheckpointInfo.from_body(body)
    assert view.verified and view.terminating
    run = RunView.from_body(
        {
            "metadata": {"name": "r", "namespace": "ns", "uid": "u"},
            "spec": {"store": {"uri": "file:///x"}, "consumers": {"reportTimeoutSeconds": 5}},
            "status": {
                "attempts": [
                    {"attempt": 0, "pod": "p0", "phase": "Failed", "resumedFrom": {"name": "a"}},
                    {"attempt": 1, "pod": "p1", "phase": "Running", "resumedFrom": {"name": "b"}},
                    {"attempt": 2, "pod": "p2", "phase": "Pending"},
                ]
            },
        }
    )
    assert run.resume_targets == frozenset({"b"}) and run.report_timeout_s == 5
    pod = {
        "metadata": {
            "name": "c",
            "labels": {names.LABEL_CONSUMER_OF: "r"},
            "annotations": {names.ANNOTATION_LOADED_STEP: " 7 "},
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "managedFields": [
                {"manager": "kubelet", "time": "2025-01-01T11:00:00Z", "fieldsV1": {}},
                {
                    "manager": "consumer",
                    "time": "2025-01-01T10:00:00Z",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {f"f:{names.ANNOTATION_LOADED_STEP}": {}}}
                    },
                },
            ],
        },
        "status": {"phase": "Running"},
    }
    view_pod = ConsumerView.from_body(pod)
    assert view_pod.loaded_step == 7 and view_pod.live
    assert view_pod.last_report == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
    assert last_report_time({"creationTimestamp": "2025-01-01T00:00:00Z"}) == datetime(
        2025, 1, 1, tzinfo=UTC
    )
    garbage = ConsumerView.from_body(
        {"metadata": {"name": "g", "annotations": {names.ANNOTATION_LOADED_STEP: "x"}}}
    )
    assert garbage.loaded_step is None


def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    exprs = [
        ({"key": "a", "operator": "In", "values": ["1", "3"]}, True),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, False),
        ({"key": "c", "operator": "Exists"}, False),
        ({"key": "c", "operator": "DoesNotExist"}, True),
    ]
    for expr, expected in exprs:
        assert selector_matches({"matchExpressions": [expr]}, labels) is expected


# --- properties -------------------------------------------------------------------------------

checkpoint_lists = st.lists(
    st.builds(
        ckpt,
        step=st.integers(0, 30),
        attempt=st.integers(0, 3),
        phase=st.sampled_from(["Ready", "Ready", "Pending", "Invalid"]),
        kind=st.sampled_from(["full", "full", "weights"]),
        terminating=st.booleans(),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda c: c.name,
)
consumer_lists = st.lists(
    st.builds(
        consumer,
        name=st.sampled_from(["c1", "c2", "c3"]),
        loaded=st.none() | st.integers(0, 32),
        ago_s=st.floats(0, 120),
        live=st.booleans(),
    ),
    max_size=4,
    unique_by=lambda c: c.name,
)


@settings(max_examples=300, deadline=None)
@given(
    cks=checkpoint_lists,
    pods=consumer_lists,
    targets=st.sets(st.integers(0, 11), max_size=2),
    run_state=st.sampled_from(["live", "terminating", "gone"]),
    data=st.data(),
)
def test_no_unsafe_deletion(
    cks: list[CheckpointInfo],
    pods: list[ConsumerView],
    targets: set[int],
    run_state: str,
    data: st.DataObject,
) -> None:
    """Whatever the state, a deletable unforced checkpoint violates none of the rules."""
    target_names = frozenset(cks[i].name for i in targets if i < len(cks))
    run = None
    if run_state != "gone":
        run = RunView(
            name="r",
            report_timeout_s=60,
            resume_targets=target_names,
            terminating=run_state != "live",
        )
    target = data.draw(st.sampled_from(cks))
    blockers = deletion_blockers(target, run=run, siblings=cks, consumers=pods, now=NOW)
    if not blockers:
        for p in pods:
            if p.live and (NOW - p.last_report).total_seconds() <= 60:
                assert p.loaded_step is not None and p.loaded_step > target.step
        if run_state == "live":
            assert target.name not in target_names
            assert target.name not in newest_protected(cks)
    forced = CheckpointInfo(**{**target.__dict__, "force_delete": True})
    assert deletion_blockers(forced, run=run, siblings=cks, consumers=pods, now=NOW) == []


@settings(max_examples=200, deadline=None)
@given(cks=checkpoint_lists, pods=consumer_lists)
def test_a_greater_report_never_adds_blockers(
    cks: list[CheckpointInfo], pods: list[ConsumerView]
) -> None:
    """Monotonic: consumers moving forward can only release checkpoints, never hold more."""
    moved = [
        ConsumerView(p.name, {}, (p.loaded_step or 0) + 5, p.last_report, p.live) for p in pods
    ]
    for c in cks:
        before = deletion_blockers(c, run=RUN, siblings=cks, consumers=pods, now=NOW)
        after = deletion_blockers(c, run=RUN, siblings=cks, consumers=moved, now=NOW)
        assert len(after) <= len(before)


@settings(max_examples=200, deadline=None)
@given(cks=checkpoint_lists)
def test_newest_protected_is_the_max_verified(cks: list[CheckpointInfo]) -> None:
    protected = newest_protected(cks)
    ready = [c for c in cks if c.phase == "Ready"]
    if not ready:
        assert protected == set()
        return
    top = max(ready, key=lambda c: (c.step, c.attempt))
    assert top.name in protected
    assert len(protected) <= 2
