"""The pure parts of the operator's metrics: status transitions, blocker labels, series cleanup."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from ckpt_operator import metrics
from ckpt_operator.api.models import AttemptStatus, CheckpointRef, Condition, TrainingRunStatus
from ckpt_operator.policy.deletion import blockers
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import RunView
from tests.unit.factories import checkpoint

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def attempt(
    n: int, phase: str, reason: str | None = None, step: int | None = None
) -> AttemptStatus:
    ref = None if step is None else CheckpointRef(name=f"c{step}", step=step, attempt=0, uri="u")
    return AttemptStatus.model_validate(
        {"attempt": n, "pod": f"r-attempt-{n}", "phase": phase, "reason": reason}
        | ({"resumedFrom": ref.wire()} if ref else {})
    )


def status(*attempts: AttemptStatus, phase: str = "Running", failed: str = "") -> TrainingRunStatus:
    conditions = []
    if failed:
        conditions.append(
            Condition.model_validate(
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": failed,
                    "message": "m",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            )
        )
    return TrainingRunStatus(phase=phase, attempts=list(attempts), conditions=conditions)  # type: ignore[arg-type]


def test_a_failure_and_the_restart_it_causes() -> None:
    old = status(attempt(0, "Running"))
    closed = status(attempt(0, "Failed", "OOMKilled"), phase="BackingOff")
    assert metrics.transition(old, closed) == metrics.RunTransition(failed=(0,))
    restarted = status(attempt(0, "Failed", "OOMKilled"), attempt(1, "Pending", step=100))
    assert metrics.transition(closed, restarted) == metrics.RunTransition(
        restart_reasons=("OOMKilled",)
    )
    # Closed and restarted in one write (no backoff): both at once.
    assert metrics.transition(old, restarted) == metrics.RunTransition(
        failed=(0,), restart_reasons=("OOMKilled",)
    )
    # The same write seen again (a retried reconcile) changes nothing.
    assert metrics.transition(restarted, restarted) == metrics.RunTransition()


def test_the_first_attempt_is_no_restart_and_a_run_failure_has_its_reason() -> None:
    assert metrics.transition(status(), status(attempt(0, "Pending"))) == metrics.RunTransition()
    running = status(attempt(0, "Running"))
    failed = status(attempt(0, "Failed", "Error"), phase="Failed", failed="RestartBudgetExhausted")
    assert metrics.transition(running, failed) == metrics.RunTransition(
        failed=(0,), run_failed="RestartBudgetExhausted"
    )


def test_counting_a_transition() -> None:
    def restarts() -> float:
        return REGISTRY.get_sample_value("ckpt_operator_restarts_total", {"reason": "Evicted"}) or 0

    before = restarts()
    metrics.count_transition(metrics.RunTransition(restart_reasons=("Evicted", "Evicted")))
    assert restarts() == before + 2


def test_run_gauges_are_set_from_status_and_removed_with_the_run() -> None:
    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "run": "gone"})

    metrics.set_run_gauges(
        "ns", "gone", status(attempt(0, "Failed"), attempt(1, "Pending", step=200))
    )
    metrics.RUN_RETAINED_BYTES.labels("ns", "gone").set(1234)
    assert sample("ckpt_operator_run_attempt") == 1
    assert sample("ckpt_operator_run_resume_step") == 200
    metrics.forget_run("ns", "gone")
    assert sample("ckpt_operator_run_attempt") is None
    assert sample("ckpt_operator_run_resume_step") is None
    assert sample("ckpt_operator_run_retained_bytes") is None
    metrics.forget_run("ns", "gone")  # twice, or for a run never seen: fine


def test_every_blocker_text_has_its_own_label() -> None:
    """Fails when policy.deletion words a blocker in a way the label mapping does not know."""
    ckpt = checkpoint(100)
    run = RunView("r", "ns", resume_targets=frozenset({ckpt.name}))
    held = blockers(
        ckpt, run=run, newest=True, consumers=[ConsumerView("vllm", last_report=NOW)], now=NOW
    )
    assert len(held) == 3
    assert metrics.blocker_kinds(held) == {"consumer", "resume_target", "newest"}
    assert metrics.blocker_kinds(["something new"]) == {"other"}
