"""Retention: which checkpoints expire (examples and properties)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.policy.deletion import newest_protected
from ckpt_operator.policy.retention import decide, expired
from ckpt_operator.views.checkpoint import CheckpointInfo
from tests.unit.factories import checkpoint


def ckpt(step: int, attempt: int = 0, **fields: object) -> CheckpointInfo:
    return checkpoint(step, attempt, **{"size_bytes": 100, **fields})


def steps(result: list) -> list[int]:  # type: ignore[type-arg]
    return [e.checkpoint.step for e in result]


def test_no_policy_expires_nothing() -> None:
    cks = [ckpt(s) for s in range(1, 6)]
    assert expired(cks, None) == []
    assert expired(cks, {}) == []


def test_keep_last_and_every() -> None:
    cks = [ckpt(s) for s in range(10, 110, 10)]
    assert steps(expired(cks, {"keepLast": 3})) == [10, 20, 30, 40, 50, 60, 70]
    assert steps(expired(cks, {"keepLast": 2, "keepEvery": 50})) == [10, 20, 30, 40, 60, 70, 80]


def test_keep_best_by_metric() -> None:
    cks = [ckpt(s, metrics={"loss": float(10 - s)}) for s in range(1, 6)] + [ckpt(6)]
    result = expired(
        cks, {"keepLast": 1, "keepBest": {"metric": "loss", "mode": "min", "count": 2}}
    )
    assert steps(result) == [1, 2, 3]
    best_max = expired(cks, {"keepBest": {"metric": "loss", "mode": "max", "count": 1}})
    assert steps(best_max) == [2, 3, 4, 5]  # 1 has the max loss; 6 is newest


def test_max_bytes_drops_oldest_first_and_never_newest() -> None:
    cks = [ckpt(s, size_bytes=100) for s in range(1, 6)]
    assert steps(expired(cks, {"maxBytes": 250})) == [1, 2, 3]
    assert steps(expired(cks, {"maxBytes": 0})) == [1, 2, 3, 4]


def test_newest_pending_invalid_terminating_and_resume_targets_are_left_alone() -> None:
    cks = [
        ckpt(1),
        ckpt(2, phase="Invalid"),
        ckpt(3, phase="Pending"),
        ckpt(4, terminating=True),
        ckpt(5),
        ckpt(6),
    ]
    result = expired(cks, {"keepLast": 1}, protected={"r-step-5-a0"})
    assert steps(result) == [1]


retention_policies = st.fixed_dictionaries(
    {},
    optional={
        "keepLast": st.integers(1, 5),
        "keepEvery": st.integers(1, 7),
        "keepBest": st.fixed_dictionaries(
            {
                "metric": st.just("loss"),
                "mode": st.sampled_from(["min", "max"]),
                "count": st.integers(1, 3),
            }
        ),
        "maxBytes": st.integers(0, 2000),
    },
)
checkpoint_lists = st.lists(
    st.builds(
        ckpt,
        step=st.integers(0, 40),
        attempt=st.integers(0, 2),
        phase=st.sampled_from(["Ready", "Ready", "Ready", "Pending", "Invalid"]),
        kind=st.sampled_from(["full", "full", "weights"]),
        terminating=st.booleans(),
        size_bytes=st.integers(0, 500),
        metrics=st.fixed_dictionaries({}, optional={"loss": st.floats(0, 10)}),
    ),
    max_size=15,
    unique_by=lambda c: c.name,
)


@settings(max_examples=300, deadline=None)
@given(cks=checkpoint_lists, policy=retention_policies, protected=st.sets(st.integers(0, 14)))
def test_retention_properties(
    cks: list[CheckpointInfo],
    policy: dict,
    protected: set[int],  # type: ignore[type-arg]
) -> None:
    names = {cks[i].name for i in protected if i < len(cks)}
    result = expired(cks, policy, protected=names)
    gone = {e.checkpoint.name for e in result}
    assert len(gone) == len(result), "each checkpoint expires once"
    assert not gone & newest_protected(cks), "the newest Ready is never expired"
    assert not gone & names, "resume targets are never expired"
    for e in result:
        assert e.checkpoint.phase == "Ready" and not e.checkpoint.terminating
    live_ready = sorted(
        (c for c in cks if c.phase == "Ready" and not c.terminating),
        key=lambda c: (c.step, c.attempt),
        reverse=True,
    )
    if "keepLast" in policy and "maxBytes" not in policy:
        assert not gone & {c.name for c in live_ready[: policy["keepLast"]]}
    if "keepEvery" in policy and "maxBytes" not in policy:
        assert all(e.checkpoint.step % policy["keepEvery"] for e in result)
    if "maxBytes" in policy:
        kept = [c for c in live_ready if c.name not in gone]
        removable = [c for c in kept if c.name not in newest_protected(cks) | names]
        total = sum(c.size_bytes or 0 for c in kept)
        assert total <= policy["maxBytes"] or not [c for c in removable if c.size_bytes]
    if not {"keepLast", "keepEvery", "keepBest", "maxBytes"} & policy.keys():
        assert result == []


def weights(step: int, attempt: int = 0) -> CheckpointInfo:
    return ckpt(step, attempt, kind="weights")


def test_rules_apply_per_kind_weights_exports_do_not_crowd_out_full_checkpoints() -> None:
    """Exporting weights after every save must not leave keepLast=2 with a single full
    checkpoint to resume from: each kind keeps its own newest two."""
    cks = [c for s in range(1, 6) for c in (ckpt(s * 10), weights(s * 10))]
    gone = expired(cks, {"keepLast": 2})
    assert sorted((e.checkpoint.kind, e.checkpoint.step) for e in gone) == [
        ("full", 10),
        ("full", 20),
        ("full", 30),
        ("weights", 10),
        ("weights", 20),
        ("weights", 30),
    ]


def test_every_checkpoint_gets_a_decision_and_a_reason() -> None:
    cks = [
        ckpt(10),
        ckpt(20, metrics={"loss": 0.1}),
        ckpt(30),
        ckpt(40, phase="Invalid"),
        ckpt(50, terminating=True),
        ckpt(60),
        ckpt(70),
        ckpt(80),
    ]
    policy = {"keepLast": 1, "keepEvery": 30, "keepBest": {"metric": "loss", "count": 1}}
    reasons = {
        d.checkpoint.step: (d.expires, d.reason)
        for d in decide(cks, policy, protected={"r-step-70-a0"})
    }
    assert reasons == {
        10: (True, "not kept by keepLast=1, keepEvery=30, keepBest=loss:min:1"),
        20: (False, "kept by keepBest=loss:min:1"),
        30: (False, "kept by keepEvery=30"),
        40: (False, "Invalid: retention expires only Ready checkpoints"),
        50: (False, "being deleted already"),
        60: (False, "kept by keepEvery=30"),
        70: (False, "resume target of a pending or running attempt"),
        80: (False, "newest Ready checkpoint"),
    }
    assert [d.checkpoint.step for d in decide(cks, policy)] == [10, 20, 30, 40, 50, 60, 70, 80]


def test_decisions_without_keep_rules() -> None:
    cks = [ckpt(s, size_bytes=100) for s in (1, 2, 3)]
    assert {d.reason for d in decide(cks, None)} == {
        "no retention policy",
        "newest Ready checkpoint",
    }
    by_bytes = [(d.expires, d.reason) for d in decide(cks, {"maxBytes": 200})]
    assert by_bytes == [
        (True, "over maxBytes=200"),
        (False, "within maxBytes=200"),
        (False, "newest Ready checkpoint"),
    ]


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 40), unique=True, max_size=12),
    st.integers(1, 4),
    st.integers(0, 1000),
)
def test_expired_is_the_decisions_that_expire(
    steps_: list[int], keep_last: int, max_bytes: int
) -> None:
    cks = [ckpt(s, size_bytes=100) for s in steps_]
    policy = {"keepLast": keep_last, "maxBytes": max_bytes}
    decisions = decide(cks, policy)
    assert len(decisions) == len(cks)
    assert [(e.checkpoint, e.reason) for e in expired(cks, policy)] == [
        (d.checkpoint, d.reason) for d in decisions if d.expires
    ]
