"""The incremental newest-verified view agrees with the O(n) policy, and errs only safely."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.policy.deletion import is_newest, newest_protected
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.newest import NewestVerified
from tests.unit.factories import checkpoint

events = st.lists(
    st.tuples(
        st.integers(0, 6),  # step
        st.integers(0, 1),  # attempt
        st.sampled_from(["full", "weights"]),
        st.sampled_from(["Pending", "Ready", "Invalid", "Deleting", "gone"]),
        st.booleans(),  # was verified
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(history=events, lag=st.integers(0, 3))
def test_agrees_with_newest_protected_and_a_lagging_view_only_keeps_more(
    history: list[tuple[int, int, str, str, bool]], lag: int
) -> None:
    """Replay checkpoint events into the view; the last ``lag`` events are indexed but not yet
    seen by the view (events arrive after index updates). With no lag the answers equal the
    policy's; with lag, nothing the policy would keep is ever released."""
    live: dict[str, CheckpointInfo] = {}
    view = NewestVerified()
    seen = len(history) - lag
    for i, (step, attempt, kind, phase, was_verified) in enumerate(history):
        info = checkpoint(step, attempt, kind=kind)
        if phase == "gone":
            live.pop(info.name, None)
            continue
        info = replace(
            info, phase=phase, was_verified=was_verified, terminating=phase == "Deleting"
        )
        live[info.name] = info
        if i < seen:
            view.note(info)
    protected = newest_protected(live.values())
    for info in live.values():
        newest = is_newest(info, lambda full, c=info: view.newer_exists(c, full, live.get))
        if lag == 0:
            assert newest == (info.name in protected), info
        elif info.name in protected:
            assert newest, f"{info.name} released while it is the newest"
