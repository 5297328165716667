"""Prometheus metrics the operator exports on ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "Checkpoints marked for deletion whose storage is held back (consumers, resume, newest).",
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
