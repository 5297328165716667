"""Resume selection (verified resume, newest resume) over hand-picked and random histories."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.policy.resume import (
    MAX_CANDIDATES,
    made_progress,
    newest_first,
    resume_candidates,
    resume_plan,
    resume_target,
    unusable_reason,
    usable,
)
from ckpt_operator.views.checkpoint import CheckpointInfo
from tests.unit.factories import checkpoint as ckpt

PHASES = ("Pending", "Ready", "Invalid", "Deleting")


def test_no_checkpoints_means_from_scratch() -> None:
    assert resume_target([]) is None
    assert resume_plan([]).target is None
    assert resume_plan([]).candidates == ()


def test_greatest_step_across_attempts_not_the_last_attempt() -> None:
    history = [ckpt(100, 0), ckpt(200, 0), ckpt(50, 1)]
    assert resume_target(history) == ckpt(200, 0)
    assert [c.step for c in resume_plan(history).candidates] == [200, 100, 50]


def test_tie_goes_to_the_later_attempt() -> None:
    assert resume_target([ckpt(200, 3), ckpt(200, 1), ckpt(200, 2)]) == ckpt(200, 3)


def test_only_ready_full_not_terminating_checkpoints_qualify() -> None:
    history = [
        ckpt(100),
        ckpt(500, phase="Pending"),
        ckpt(400, phase="Invalid"),
        ckpt(300, terminating=True),
        ckpt(250, phase="Deleting"),
        ckpt(600, kind="weights"),
    ]
    assert resume_target(history) == ckpt(100)
    assert resume_plan(history).candidates == (ckpt(100),)


def test_candidates_are_capped() -> None:
    history = [ckpt(s) for s in range(0, 1000, 10)]
    plan = resume_plan(history)
    assert len(plan.candidates) == MAX_CANDIDATES
    assert [c.step for c in plan.candidates] == list(range(990, 990 - 10 * MAX_CANDIDATES, -10))


def test_made_progress() -> None:
    history = [ckpt(100, 0), ckpt(200, 1, phase="Pending"), ckpt(300, 2, phase="Invalid")]
    assert made_progress(history, 0, None)
    assert made_progress(history, 0, 50)
    assert not made_progress(history, 0, 100)  # re-saving the resume step is no progress
    assert made_progress(history, 1, 100)  # verification may still be running
    assert not made_progress(history, 2, 100)  # an Invalid checkpoint is no progress
    assert not made_progress(history, 3, None)
    assert made_progress([ckpt(100, 4, terminating=True)], 4, None)
    assert not made_progress([ckpt(100, 4, kind="weights")], 4, None)


checkpoints = st.builds(
    ckpt,
    step=st.integers(0, 50),
    attempt=st.integers(0, 5),
    phase=st.sampled_from(PHASES),
    terminating=st.booleans(),
    kind=st.sampled_from(("full", "full", "weights")),
)
histories = st.lists(checkpoints, max_size=40).map(
    lambda cs: list({(c.step, c.attempt): c for c in cs}.values())  # one object per name
)


@settings(max_examples=400)
@given(histories, st.randoms(use_true_random=False))
def test_target_is_the_maximum_of_the_usable_ones(
    history: list[CheckpointInfo], rnd: random.Random
) -> None:
    target = resume_target(history)
    good = [c for c in history if c.phase == "Ready" and not c.terminating and c.kind == "full"]
    if not good:
        assert target is None
        return
    assert target is not None and usable(target)
    assert target.step == max(c.step for c in good)
    assert target.attempt == max(c.attempt for c in good if c.step == target.step)
    # Nothing about the order the index happens to hold them in matters.
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert resume_target(shuffled) == target


@settings(max_examples=400)
@given(histories, st.integers(1, 10))
def test_candidates_are_the_usable_ones_newest_first(
    history: list[CheckpointInfo], limit: int
) -> None:
    every = resume_candidates(history)
    assert all(usable(c) for c in every)
    assert len(every) == sum(1 for c in history if usable(c))
    keys = [(c.step, c.attempt) for c in every]
    assert keys == sorted(keys, reverse=True)
    capped = resume_plan(history, limit=limit).candidates
    assert list(capped) == every[:limit]
    assert resume_plan(history, limit=limit).target == resume_target(history)


def test_why_a_checkpoint_is_no_resume_candidate() -> None:
    assert unusable_reason(ckpt(1)) is None
    assert unusable_reason(ckpt(1, phase="Pending")) == "Pending: not verified yet"
    assert unusable_reason(ckpt(1, phase="Invalid")) == "Invalid: failed verification"
    assert unusable_reason(ckpt(1, terminating=True)) == "Terminating: being deleted"
    assert unusable_reason(ckpt(1, kind="weights")).startswith("weights-only export")


@settings(max_examples=300)
@given(checkpoints)
def test_a_reason_is_given_exactly_for_the_unusable(c: CheckpointInfo) -> None:
    usable_by_definition = c.phase == "Ready" and not c.terminating and c.kind == "full"
    assert (unusable_reason(c) is None) == usable_by_definition == usable(c)


@given(histories)
def test_candidates_keep_the_order_of_newest_first(history: list[CheckpointInfo]) -> None:
    assert resume_candidates(history) == [c for c in newest_first(history) if usable(c)]
