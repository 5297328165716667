"""Prometheus metrics the operator exports on ``--metrics-port``.

Label values are bounded: reasons come from small fixed sets (pod and container termination
reasons, the run's failure reasons, the three deletion blockers), and the only per-object
labels are ``namespace``/``run`` on per-run gauges, whose series :func:`forget_run` removes when
the run is deleted. The chart's dashboard and alerts use these names; a test fails when they
drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from ckpt_operator.api.models import TrainingRunStatus

RESOURCES_SEEN = Counter(
    "ckpt_operator_resources_initialized_total",
    "Resources the operator gave their initial status and conditions.",
    ["kind"],
)

# --- checkpoint lifecycle ---------------------------------------------------------------------

CHECKPOINTS_VERIFIED = Counter(
    "ckpt_operator_checkpoints_verified_total",
    "Checkpoints verified against their manifest, by outcome.",
    ["result"],
)
VERIFICATIONS_PENDING = Gauge(
    "ckpt_operator_verifications_pending",
    "Checkpoint verifications queued or in flight in this operator (a backlog waits here).",
)
CHECKPOINTS_REGISTERED = Counter(
    "ckpt_operator_checkpoints_registered_total",
    "Committed checkpoints found by the store scan with no Checkpoint object, and registered.",
)
CHECKPOINTS_DELETED = Counter(
    "ckpt_operator_checkpoints_deleted_total",
    "Checkpoints whose storage the finalizer deleted (or found already gone).",
)
BYTES_FREED = Counter(
    "ckpt_operator_checkpoint_bytes_freed_total",
    "Bytes of checkpoint storage deleted (as recorded by verification).",
)
DELETE_FAILURES = Counter(
    "ckpt_operator_checkpoint_delete_failures_total",
    "Storage deletions that failed and will be retried.",
)
DELETIONS_BLOCKED = Gauge(
    "ckpt_operator_checkpoint_deletions_blocked",
    "Checkpoints marked for deletion whose storage is held back, by blocker (consumer, "
    "resume_target, newest); one checkpoint held for two reasons counts under both.",
    ["reason"],
)
RETENTION_EXPIRED = Counter(
    "ckpt_operator_retention_expired_total",
    "Checkpoints retention marked for deletion.",
)
ORPHANS_SWEPT = Counter(
    "ckpt_operator_orphans_swept_total",
    "Orphaned store entries removed (or, in dry-run mode, found), by kind.",
    ["kind", "dry_run"],
)
ORPHAN_BYTES_SWEPT = Counter(
    "ckpt_operator_orphan_bytes_swept_total",
    "Bytes of orphaned store entries removed (or, in dry-run mode, found).",
    ["kind", "dry_run"],
)
CONSUMERS_SILENT = Gauge(
    "ckpt_operator_consumers_silent",
    "Consumer pods silent past their run's reportTimeoutSeconds (they no longer block).",
)
UNSAFE_STORE_ENTRIES = Counter(
    "ckpt_operator_unsafe_store_entries_total",
    "Store entries skipped because they resolve outside their store (e.g. a planted symlink).",
)

# --- admission webhook (attached runs) --------------------------------------------------------

WEBHOOK_INJECTIONS = Counter(
    "ckpt_operator_webhook_injections_total",
    "Pods of attached runs given the CKPT_* environment, by whether they opened a new attempt "
    "or joined an open one.",
    ["attempt"],
)
WEBHOOK_ERRORS = Counter(
    "ckpt_operator_webhook_errors_total",
    "Pods the webhook refused (a reason the user must fix) or could not serve (unavailable: the "
    "API server's failurePolicy decides), by reason.",
    ["reason"],
)
WEBHOOK_SECONDS = Histogram(
    "ckpt_operator_webhook_duration_seconds",
    "Time to answer one admission request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# --- training runs ----------------------------------------------------------------------------

RESTARTS = Counter(
    "ckpt_operator_restarts_total",
    "Attempts started after a failed one, by the failed attempt's reason (Error, OOMKilled, "
    "Preempted, PodDeleted, StartupTimeout, ...).",
    ["reason"],
)
RUNS_FAILED = Counter(
    "ckpt_operator_runs_failed_total",
    "Runs that failed for good, by reason (RestartBudgetExhausted, FailedByRule, NoProgress, "
    "PreemptionBudgetExhausted, InvalidSpec, ...).",
    ["reason"],
)
RESTART_SECONDS = Histogram(
    "ckpt_operator_restart_duration_seconds",
    "Time from observing an attempt's failure to creating the next attempt's pods (backoff "
    "and teardown of the failed workers included).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
RUN_ATTEMPT = Gauge(
    "ckpt_operator_run_attempt",
    "The run's latest attempt number (0 for the first): its rate is the run's restart rate.",
    ["namespace", "run"],
)
RUN_RESUME_STEP = Gauge(
    "ckpt_operator_run_resume_step",
    "The step the run's latest attempt resumed from (0: from scratch).",
    ["namespace", "run"],
)
RUN_RETAINED_BYTES = Gauge(
    "ckpt_operator_run_retained_bytes",
    "Bytes of the run's checkpoints still in storage (as recorded by verification).",
    ["namespace", "run"],
)
PER_RUN = (RUN_ATTEMPT, RUN_RESUME_STEP, RUN_RETAINED_BYTES)


@dataclass(frozen=True)
class RunTransition:
    """What one status write of a run changed, as far as the metrics are concerned."""

    failed: tuple[int, ...] = ()
    """Attempts this write closed as Failed."""
    restart_reasons: tuple[str, ...] = ()
    """For each attempt this write started after a failed one: that failure's reason."""
    run_failed: str | None = None
    """The reason, when this write failed the run."""


def transition(old: TrainingRunStatus, new: TrainingRunStatus) -> RunTransition:
    """Compare a run's status before and after a step (pure)."""
    before = {a.attempt: a for a in old.attempts}
    by_number = {a.attempt: a for a in new.attempts}
    failed = tuple(
        a.attempt
        for a in new.attempts
        if a.phase == "Failed" and (a.attempt not in before or before[a.attempt].phase != "Failed")
    )
    reasons = tuple(
        (previous.reason or "Unknown")
        for a in new.attempts
        if a.attempt not in before
        and (previous := by_number.get(a.attempt - 1)) is not None
        and previous.phase == "Failed"
    )
    run_failed = None
    if new.phase == "Failed" and old.phase != "Failed":
        condition = next((c for c in new.conditions if c.type == "Failed"), None)
        run_failed = condition.reason if condition is not None else "Unknown"
    return RunTransition(failed, reasons, run_failed)


def count_transition(change: RunTransition) -> None:
    """Count the restarts and run failures of a status write that went through."""
    for reason in change.restart_reasons:
        RESTARTS.labels(reason).inc()
    if change.run_failed is not None:
        RUNS_FAILED.labels(change.run_failed).inc()


def set_run_gauges(namespace: str, run: str, status: TrainingRunStatus) -> None:
    """Per-run gauges from status, so a restarted operator shows them again at once."""
    if not status.attempts:
        return
    latest = status.attempts[-1]
    RUN_ATTEMPT.labels(namespace, run).set(latest.attempt)
    step = latest.resumed_from.step if latest.resumed_from is not None else 0
    RUN_RESUME_STEP.labels(namespace, run).set(step)


def forget_run(namespace: str, run: str) -> None:
    """Remove a deleted run's series: per-run labels must not outlive the run."""
    for gauge in PER_RUN:
        with contextlib.suppress(KeyError):  # never set: the run had no attempt yet
            gauge.remove(namespace, run)


BLOCKER_PREFIXES = (
    ("consumer ", "consumer"),
    ("resume target ", "resume_target"),
    ("newest ", "newest"),
)


def blocker_kinds(held: Iterable[str]) -> set[str]:
    """The bounded reason labels of :func:`~ckpt_operator.policy.deletion.blockers`' texts."""
    return {
        next((kind for prefix, kind in BLOCKER_PREFIXES if text.startswith(prefix)), "other")
        for text in held
    }
