"""Retention: which checkpoints expire (examples and properties)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.policy.deletion import newest_protected
from ckpt_operator.policy.retention import expired
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
