"""The per-run maintenance timer: consumer health, retention, store scan, orphan sweep.

One timer per TrainingRun (timers are fine on our own resources; never on pods):

* flags consumers silent past ``reportTimeoutSeconds`` (Warning ``ConsumerSilent``,
  condition ``ConsumersHealthy=False``);
* applies retention by *deleting* expired Checkpoint objects, so storage still goes only
  through the finalizer and the deletion policy;
* every ``--scan-interval`` registers committed checkpoints that have no object (a lost SDK
  registration loses nothing) and sweeps uncommitted leftovers older than ``--sweep-grace``
  (``--sweep-dry-run`` only reports them).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers.consumers import consumer_health, run_consumers
from ckpt_operator.handlers.indexes import (
    AttemptPods,
    CheckpointsByRun,
    ConsumersByRun,
    PodsByNamespace,
)
from ckpt_operator.handlers.runtime import Logger, runtime
from ckpt_operator.handlers.selectors import TRAINING_RUNS
from ckpt_operator.handlers.store_scan import register_unknown, sweep
from ckpt_operator.kube import client as kube
from ckpt_operator.policy import retention
from ckpt_operator.policy.verification import stalled
from ckpt_operator.storage.open import open_store
from ckpt_operator.storage.store import StoreError
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.run import RunView


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# A decorator argument, so it is read at import time rather than from the operator config.
TICK_S = _env_float("CKPT_MAINTENANCE_INTERVAL_S", 5.0)


@kopf.timer(*TRAINING_RUNS, interval=TICK_S, id="checkpoint-maintenance")  # type: ignore[arg-type]  # see indexes
async def maintain(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    checkpoints_by_run: CheckpointsByRun,
    consumers_by_run: ConsumersByRun,
    pods_by_namespace: PodsByNamespace,
    attempt_pods: AttemptPods,
    logger: Logger,
    **_: Any,
) -> None:
    state = runtime(memo)
    run = RunView.from_body(body)
    run = state.protected(run, attempt_pods.get((run.namespace, run.name), []))
    consumers = run_consumers(run, consumers_by_run, pods_by_namespace)
    health = consumer_health(body, run, consumers, status, datetime.now(UTC), state)
    if health is not None:
        patch.status.update(health)
    key = (run.namespace, run.name)
    checkpoints = list(checkpoints_by_run.get(key, []))
    if not run.terminating:  # the deletion handler removes the run's series
        retained = sum(c.size_bytes or 0 for c in checkpoints)
        metrics.RUN_RETAINED_BYTES.labels(run.namespace, run.name).set(retained)
    await apply_retention(body, run, checkpoints, logger)
    config: OperatorConfig = memo.config
    if time.monotonic() - state.last_scan.get(key, float("-inf")) < config.scan_interval_s:
        return
    state.last_scan[key] = time.monotonic()
    for checkpoint in stalled(checkpoints, datetime.now(UTC), state.verifying):
        logger.warning("checkpoint %s has no verdict yet: verifying it again", checkpoint.name)
        requested = {names.ANNOTATION_VERIFY_REQUESTED: datetime.now(UTC).isoformat()}
        await kube.patch_metadata(
            names.CHECKPOINTS, run.namespace, checkpoint.name, {"annotations": requested}
        )
    try:
        store = await open_store(
            run.namespace, run.store_uri, run.secret_name, config.allowed_roots
        )
    except StoreError as exc:
        if state.store_errors.get(key) != str(exc):  # once, not every scan (an Event each)
            logger.warning("store of run %s not scanned: %s", run.name, exc)
            state.store_errors[key] = str(exc)
        return
    state.store_errors.pop(key, None)
    scanned = await register_unknown(run, store, checkpoints_by_run, state.recently_deleted, logger)
    known = {c.name for c in checkpoints_by_run.get(key, [])}
    swept = await asyncio.to_thread(sweep, store, run, known, False, config, logger)
    report_unsafe(body, {**scanned.unsafe, **swept.unsafe}, state.unsafe.setdefault(key, set()))


def report_unsafe(body: kopf.Body, unsafe: dict[str, str], reported: set[str]) -> None:
    """A Warning per store entry that resolves outside the store, once per operator run."""
    for entry, reason in sorted(unsafe.items()):
        if entry not in reported:
            reported.add(entry)
            metrics.UNSAFE_STORE_ENTRIES.inc()
            kopf.warn(
                body,
                reason="UnsafeStoreEntry",
                message=f"store entry {entry!r} skipped: it {reason}; remove it from the store",
            )


async def apply_retention(
    body: kopf.Body,
    run: RunView,
    checkpoints: list[CheckpointInfo],
    logger: Logger,
) -> None:
    """Delete the objects retention expires; the finalizer decides when their storage goes."""
    expiries = retention.expired(checkpoints, run.retention, protected=run.resume_targets)
    deleted = []
    for expiry in expiries:
        if await kube.delete_checkpoint(run.namespace, expiry.checkpoint.name):
            deleted.append(expiry.checkpoint)
            metrics.RETENTION_EXPIRED.inc()
            logger.info("retention expired %s: %s", expiry.checkpoint.name, expiry.reason)
    if deleted:
        steps = ", ".join(str(c.step) for c in deleted)
        kopf.info(
            body,
            reason="RetentionExpired",
            message=f"marked for deletion: steps {steps} ({expiries[0].reason})",
        )
