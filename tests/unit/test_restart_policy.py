"""Restart rules, budget, backoff and the progress rule, over fixed cases and random histories."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api.models import Backoff, FailureRule, RestartPolicy
from ckpt_operator.policy.restart import (
    BUDGET_EXHAUSTED,
    FAILED_BY_RULE,
    NO_PROGRESS,
    PREEMPTIONS_EXHAUSTED,
    RESTARTING,
    backoff_seconds,
    classify,
    decide,
    rule_matches,
)
from ckpt_operator.views.pod import Failure


def rule(action: str, codes: tuple[str, list[int]] | None = None, **kw: Any) -> FailureRule:
    body: dict[str, Any] = {"action": action, **kw}
    if codes is not None:
        body["onExitCodes"] = {"operator": codes[0], "values": codes[1]}
    return FailureRule.model_validate(body)


def failure(*codes: int, reasons: tuple[str, ...] = ()) -> Failure:
    nonzero = tuple(c for c in codes if c)
    return Failure(
        exit_codes=nonzero,
        reasons=frozenset(reasons),
        exit_code=codes[0] if codes else None,
        reason=reasons[0] if reasons else None,
    )


@pytest.mark.parametrize(
    ("op", "values", "codes", "expected"),
    [
        ("In", [2, 3], (3,), True),
        ("In", [2, 3], (1,), False),
        ("In", [2], (1, 2), True),  # any container
        ("NotIn", [1], (2,), True),
        ("NotIn", [1, 2], (2,), False),
        ("NotIn", [1], (), False),  # exit code 0 (e.g. evicted) never matches NotIn
        ("In", [137], (0,), False),
    ],
)
def test_exit_code_rules(
    op: str, values: list[int], codes: tuple[int, ...], expected: bool
) -> None:
    assert rule_matches(rule("Retry", (op, values)), failure(*codes)) is expected


def test_reason_rules() -> None:
    preempt = rule("Ignore", onReasons=["Preempted", "DisruptionTarget"])
    assert rule_matches(preempt, failure(reasons=("Preempted",)))
    assert rule_matches(preempt, failure(137, reasons=("DisruptionTarget", "OOMKilled")))
    assert not rule_matches(preempt, failure(1, reasons=("Error",)))


def test_first_matching_rule_wins_and_unmatched_retries() -> None:
    rules = [
        rule("Ignore", onReasons=["Evicted"]),
        rule("FailRun", ("In", [2])),
        rule("Retry", ("In", [2, 3])),
    ]
    assert classify(rules, failure(2, reasons=("Evicted",)))[0] == "Ignore"
    assert classify(rules, failure(2))[0] == "FailRun"
    assert classify(rules, failure(3))[0] == "Retry"
    action, which = classify(rules, failure(9))
    assert (action, which) == ("Retry", "no rule matched")
    assert classify([], failure())[0] == "Retry"


@pytest.mark.parametrize(
    ("initial", "maximum", "restarts", "expected"),
    [
        (10, 300, 0, 10),
        (10, 300, 1, 20),
        (10, 300, 4, 160),
        (10, 300, 5, 300),
        (10, 300, 10_000, 300),
        (0, 300, 3, 0),
        (0, 0, 0, 0),
        (1.5, 2, 1, 2),
        (0.001, 1e9, 2000, 1e9),
    ],
)
def test_backoff(initial: float, maximum: float, restarts: int, expected: float) -> None:
    backoff = Backoff(initial_seconds=initial, max_seconds=maximum)
    assert backoff_seconds(backoff, restarts) == pytest.approx(expected)


def policy(**kw: Any) -> RestartPolicy:
    return RestartPolicy.model_validate(kw)


def test_fail_run_rule_ends_the_run_without_spending() -> None:
    p = policy(
        maxRestarts=3,
        rules=[{"action": "FailRun", "onExitCodes": {"operator": "In", "values": [2]}}],
    )
    d = decide(
        p, failure(2), attempt=0, restarts=0, attempts_without_progress=0, made_progress=True
    )
    assert (d.restart, d.reason, d.restarts, d.action) == (False, FAILED_BY_RULE, 0, "FailRun")
    assert "exit code 2" in d.message


def test_ignored_failures_spend_their_own_budget() -> None:
    """Endless preemptions (or a too broad Ignore rule) cannot loop forever."""
    p = policy(maxPreemptions=2, rules=[{"action": "Ignore", "onReasons": ["Preempted"]}])
    preempted = failure(reasons=("Preempted",))
    kw: dict[str, Any] = {"restarts": 0, "attempts_without_progress": 0, "made_progress": True}
    first = decide(p, preempted, attempt=0, preemptions=0, **kw)
    second = decide(p, preempted, attempt=1, preemptions=1, **kw)
    assert (first.restart, first.preemptions, second.restart, second.preemptions) == (
        True,
        1,
        True,
        2,
    )
    third = decide(p, preempted, attempt=2, preemptions=2, **kw)
    assert (third.restart, third.reason, third.preemptions) == (False, PREEMPTIONS_EXHAUSTED, 2)
    assert "maxPreemptions" in third.message
    retried = decide(p, failure(1), attempt=3, preemptions=2, **kw)
    assert (retried.restart, retried.preemptions, retried.restarts) == (True, 2, 1)
    unlimited = policy(
        maxPreemptions=None, rules=[{"action": "Ignore", "onReasons": ["Preempted"]}]
    )
    assert decide(unlimited, preempted, attempt=9, preemptions=10**6, **kw).restart
    assert RestartPolicy().max_preemptions == 100  # the default is a budget, not a loop


def test_ignore_restarts_without_spending_even_with_no_budget() -> None:
    p = policy(maxRestarts=0, rules=[{"action": "Ignore", "onReasons": ["Preempted"]}])
    d = decide(
        p,
        failure(reasons=("Preempted",)),
        attempt=4,
        restarts=0,
        attempts_without_progress=1,
        made_progress=False,
    )
    assert (d.restart, d.reason, d.restarts, d.attempts_without_progress) == (
        True,
        RESTARTING,
        0,
        1,
    )


def test_budget() -> None:
    p = policy(maxRestarts=2, backoff={"initialSeconds": 1, "maxSeconds": 10})
    d = decide(
        p, failure(1), attempt=0, restarts=0, attempts_without_progress=0, made_progress=True
    )
    assert (d.restart, d.restarts, d.delay_s) == (True, 1, 1)
    d = decide(
        p, failure(1), attempt=1, restarts=1, attempts_without_progress=0, made_progress=True
    )
    assert (d.restart, d.restarts, d.delay_s) == (True, 2, 2)
    d = decide(
        p, failure(1), attempt=2, restarts=2, attempts_without_progress=0, made_progress=True
    )
    assert (d.restart, d.reason, d.restarts) == (False, BUDGET_EXHAUSTED, 2)
    none = policy(maxRestarts=0)
    d = decide(
        none, failure(1), attempt=0, restarts=0, attempts_without_progress=0, made_progress=True
    )
    assert (d.restart, d.reason) == (False, BUDGET_EXHAUSTED)


def test_progress_rule() -> None:
    p = policy(maxRestarts=10, maxAttemptsWithoutProgress=2)
    d = decide(
        p, failure(1), attempt=0, restarts=0, attempts_without_progress=0, made_progress=False
    )
    assert (d.restart, d.attempts_without_progress) == (True, 1)
    d = decide(
        p, failure(1), attempt=1, restarts=1, attempts_without_progress=1, made_progress=True
    )
    assert (d.restart, d.attempts_without_progress) == (True, 0)
    d = decide(
        p, failure(1), attempt=2, restarts=2, attempts_without_progress=1, made_progress=False
    )
    assert (d.restart, d.reason, d.attempts_without_progress) == (False, NO_PROGRESS, 2)
    off = policy(maxRestarts=10)
    d = decide(
        off, failure(1), attempt=9, restarts=5, attempts_without_progress=50, made_progress=False
    )
    assert d.restart


outcomes = st.tuples(
    st.sampled_from([0, 1, 2, 137]),
    st.sampled_from([(), ("Preempted",), ("OOMKilled",), ("Evicted", "DisruptionTarget")]),
    st.booleans(),
)


@settings(max_examples=300)
@given(
    st.integers(0, 6),
    st.one_of(st.none(), st.integers(1, 4)),
    st.floats(0, 5),
    st.floats(0, 60),
    st.lists(outcomes, min_size=1, max_size=25),
)
def test_random_histories(
    max_restarts: int,
    max_stalled: int | None,
    initial: float,
    maximum: float,
    history: list[tuple[int, tuple[str, ...], bool]],
) -> None:
    """Drive decide() through a random sequence of failures like the controller does."""
    p = policy(
        maxRestarts=max_restarts,
        maxAttemptsWithoutProgress=max_stalled,
        backoff={"initialSeconds": min(initial, maximum), "maxSeconds": maximum},
        rules=[
            {"action": "Ignore", "onReasons": ["Preempted", "DisruptionTarget"]},
            {"action": "FailRun", "onExitCodes": {"operator": "In", "values": [2]}},
        ],
    )
    restarts = stalled = 0
    retried = 0
    for attempt, (code, reasons, progress) in enumerate(history):
        f = failure(code, reasons=reasons)
        d = decide(
            p,
            f,
            attempt=attempt,
            restarts=restarts,
            attempts_without_progress=stalled,
            made_progress=progress,
        )
        assert 0 <= d.delay_s <= maximum
        assert d.restarts <= p.max_restarts
        expected_action = classify(p.rules, f)[0]
        assert d.action == expected_action
        if d.action == "Ignore":
            assert d.restart and d.restarts == restarts and d.attempts_without_progress == stalled
        elif d.action == "FailRun":
            assert not d.restart and d.reason == FAILED_BY_RULE
        else:
            expect_stalled = 0 if progress else stalled + 1
            assert d.attempts_without_progress == expect_stalled
            if max_stalled is not None and expect_stalled >= max_stalled:
                assert (d.restart, d.reason) == (False, NO_PROGRESS)
            elif restarts >= max_restarts:
                assert (d.restart, d.reason) == (False, BUDGET_EXHAUSTED)
            else:
                assert d.restart and d.restarts == restarts + 1
                assert d.delay_s == backoff_seconds(p.backoff, restarts)
                retried += 1
        restarts, stalled = d.restarts, d.attempts_without_progress
        if not d.restart:
            break
    assert restarts == retried  # only Retry restarts spend the budget
