"""What a failed attempt means for its run: retry, ignore, or fail; and how long to wait.

Pure functions over the ``restartPolicy`` model and a :class:`Failure` summary of the pod, so
every rule (first matching rule wins, the budget, the backoff, the progress rule) is unit-tested
without a cluster. Rule matching follows the Job ``podFailurePolicy``: ``onExitCodes`` looks at
the non-zero exit codes of terminated containers, ``onReasons`` at the pod's reason (Evicted,
Preempted, DeadlineExceeded), container termination reasons (OOMKilled, Error) and the
``DisruptionTarget`` condition (as ``DisruptionTarget`` and by its own reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ckpt_operator.api.models import Backoff, FailureRule, RestartPolicy
from ckpt_operator.views.pod import Failure

Action = Literal["Retry", "FailRun", "Ignore"]

RESTARTING = "Restarting"
FAILED_BY_RULE = "FailedByRule"
BUDGET_EXHAUSTED = "RestartBudgetExhausted"
NO_PROGRESS = "NoProgress"
PREEMPTIONS_EXHAUSTED = "PreemptionBudgetExhausted"


def rule_matches(rule: FailureRule, failure: Failure) -> bool:
    """Does one rule apply to the failure (podFailurePolicy semantics)?"""
    if rule.on_exit_codes is not None:
        values = set(rule.on_exit_codes.values)
        if rule.on_exit_codes.operator == "In":
            return any(code in values for code in failure.exit_codes)
        return any(code not in values for code in failure.exit_codes)
    if rule.on_reasons is not None:
        return any(reason in failure.reasons for reason in rule.on_reasons)
    return False


def describe_rule(index: int, rule: FailureRule) -> str:
    if rule.on_exit_codes is not None:
        what = f"exit codes {rule.on_exit_codes.operator} {rule.on_exit_codes.values}"
    else:
        what = f"reasons {rule.on_reasons}"
    return f"rule {index} ({rule.action} on {what})"


def classify(rules: Sequence[FailureRule], failure: Failure) -> tuple[Action, str]:
    """The action of the first matching rule, and which rule; unmatched failures retry."""
    for index, rule in enumerate(rules):
        if rule_matches(rule, failure):
            return rule.action, describe_rule(index, rule)
    return "Retry", "no rule matched"


def backoff_seconds(backoff: Backoff, restarts: int) -> float:
    """``min(maxSeconds, initialSeconds * 2**restarts)``; zero means restart at once."""
    if backoff.initial_seconds <= 0 or backoff.max_seconds <= 0:
        return 0.0
    # 2.0**1024 raises OverflowError; long before that the product is past any cap (or inf).
    exponent = min(max(restarts, 0), 1000)
    return float(min(backoff.max_seconds, backoff.initial_seconds * 2.0**exponent))


@dataclass(frozen=True)
class Decision:
    """The verdict on one failed attempt, with the counters as they are afterwards."""

    action: Action
    restart: bool
    reason: str
    """CamelCase, for conditions and events."""
    message: str
    restarts: int
    attempts_without_progress: int
    delay_s: float = 0.0
    preemptions: int = 0


def decide(
    policy: RestartPolicy,
    failure: Failure,
    *,
    attempt: int,
    restarts: int,
    attempts_without_progress: int,
    made_progress: bool,
    preemptions: int = 0,
) -> Decision:
    """Apply the rules, the restart budgets and the progress rule to a failed ``attempt``.

    ``restarts`` counts the restarts already spent from ``maxRestarts``; ``Ignore`` failures
    spend none and leave the progress count alone (a preempted attempt is nobody's fault), but
    spend one of ``maxPreemptions`` (``preemptions`` so far), so endless preemptions or a too
    broad rule cannot loop forever. ``FailRun`` ends the run whatever is left. The progress
    rule is checked before the budget so a stuck run fails with the more telling reason.
    """
    decision = _decide(policy, failure, attempt, restarts, attempts_without_progress, made_progress)
    if decision.action != "Ignore":
        return replace(decision, preemptions=preemptions)
    limit = policy.max_preemptions
    if limit is not None and preemptions >= limit:
        return replace(
            decision,
            restart=False,
            reason=PREEMPTIONS_EXHAUSTED,
            message=f"attempt {attempt} failed ({failure.describe()}); all {limit} restarts "
            "for ignored failures are used (maxPreemptions)",
            delay_s=0.0,
            preemptions=preemptions,
        )
    return replace(decision, preemptions=preemptions + 1)


def _decide(
    policy: RestartPolicy,
    failure: Failure,
    attempt: int,
    restarts: int,
    attempts_without_progress: int,
    made_progress: bool,
) -> Decision:
    action, which = classify(policy.rules, failure)
    what = f"attempt {attempt} failed ({failure.describe()})"
    if action == "FailRun":
        return Decision(
            action,
            False,
            FAILED_BY_RULE,
            f"{what}; {which} fails the run",
            restarts,
            attempts_without_progress,
        )
    if action == "Ignore":
        delay = backoff_seconds(policy.backoff, restarts)
        return Decision(
            action,
            True,
            RESTARTING,
            f"{what}; {which}: restarting without spending the budget "
            f"({restarts}/{policy.max_restarts} restarts used)",
            restarts,
            attempts_without_progress,
            delay,
        )
    stalled = 0 if made_progress else attempts_without_progress + 1
    limit = policy.max_attempts_without_progress
    if limit is not None and stalled >= limit:
        return Decision(
            action,
            False,
            NO_PROGRESS,
            f"{what}; {stalled} consecutive attempts produced no new checkpoint "
            f"(maxAttemptsWithoutProgress {limit})",
            restarts,
            stalled,
        )
    if restarts >= policy.max_restarts:
        return Decision(
            action,
            False,
            BUDGET_EXHAUSTED,
            f"{what}; all {policy.max_restarts} restarts are used (maxRestarts)",
            restarts,
            stalled,
        )
    delay = backoff_seconds(policy.backoff, restarts)
    return Decision(
        action,
        True,
        RESTARTING,
        f"{what}; {which}: restart {restarts + 1} of {policy.max_restarts}",
        restarts + 1,
        stalled,
        delay,
    )
