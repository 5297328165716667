"""Per-run maintenance: consumer health, retention, store scan, orphan sweep; run deletion.

One timer per TrainingRun (timers are fine on our own resources; never on pods):

* flags consumers silent past ``reportTimeoutSeconds`` (Warning ``ConsumerSilent``,
  condition ``ConsumersHealthy=False``);
* applies retention by *deleting* expired Checkpoint objects, so storage still goes only
  through the finalizer and the deletion policy;
* every ``--scan-interval`` registers committed checkpoints that have no object (a lost SDK
  registration loses nothing) and sweeps uncommitted leftovers older than ``--sweep-grace``
  (``--sweep-dry-run`` only reports them).

Deleting a TrainingRun deletes its Checkpoints (each through the finalizer; newest/resume
protections lapse, consumers still block) and waits for them before its own finalizer goes, so
the run's store URI and credentials are known until the last file is gone; then committed
entries nobody registered and temporaries are swept from the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers import consumers, kubeapi
from ckpt_operator.handlers.common import resource
from ckpt_operator.policy import retention
from ckpt_operator.policy.deletion import RunView, blocking_consumers, run_from_body
from ckpt_operator.storage import layout
from ckpt_operator.storage.manifest import VerifyError, scan
from ckpt_operator.storage.open import open_store
from ckpt_operator.storage.store import Store, StoreError

TRAINING_RUNS = resource("trainingruns")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# A decorator argument, so it is read at import time rather than from the operator config.
TICK_S = _env_float("CKPT_MAINTENANCE_INTERVAL_S", 5.0)

_last_scan: dict[tuple[str, str], float] = {}


@kopf.timer(*TRAINING_RUNS, interval=TICK_S, id="checkpoint-maintenance")
async def maintain(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    run = run_from_body(body)
    health = consumers.consumer_health(
        body, run, kwargs.get("pods_by_namespace"), status, datetime.now(UTC)
    )
    if health is not None:
        patch.status.update(health)
    checkpoints = list(kwargs["lifecycle_by_run"].get((run.namespace, run.name), []))
    await apply_retention(body, run, checkpoints, logger)
    key = (run.namespace, run.name)
    config: OperatorConfig = memo.config
    if time.monotonic() - _last_scan.get(key, float("-inf")) >= config.scan_interval_s:
        _last_scan[key] = time.monotonic()
        try:
            store = await open_store(
                run.namespace, run.store_uri, run.secret_name, memo.config.allowed_roots
            )
        except StoreError as exc:
            logger.warning("store of run %s not scanned: %s", run.name, exc)
            return
        index = kwargs["lifecycle_by_run"]
        await register_unknown(run, store, index, logger)
        known = {c.name for c in index.get(key, [])}
        await asyncio.to_thread(sweep, store, run, known, False, config, logger)


async def apply_retention(
    body: kopf.Body,
    run: RunView,
    checkpoints: list[Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Delete the objects retention expires; the finalizer decides when their storage goes."""
    expiries = retention.expired(checkpoints, run.retention, protected=run.resume_targets)
    deleted = []
    for expiry in expiries:
        if await kubeapi.delete_checkpoint(run.namespace, expiry.checkpoint.name):
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


def checkpoint_object(
    run: RunView, name: layout.CheckpointName, kind: str, metrics_: Any
) -> dict[str, Any]:
    """The Checkpoint the scan registers: same name, labels and owner as the SDK's."""
    meta: dict[str, Any] = {
        "name": name.object_name(run.name),
        "labels": {
            names.LABEL_RUN: run.name,
            names.LABEL_ATTEMPT: str(name.attempt),
            names.LABEL_STEP: str(name.step),
        },
    }
    if run.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": names.API_VERSION,
                "kind": "TrainingRun",
                "name": run.name,
                "uid": run.uid,
                "controller": True,
            }
        ]
    spec: dict[str, Any] = {
        "run": run.name,
        "step": name.step,
        "attempt": name.attempt,
        "path": name.path,
        "format": name.format,
        "kind": kind,
    }
    if metrics_:
        spec["metrics"] = {k: float(v) for k, v in metrics_.items()}
    return {"apiVersion": names.API_VERSION, "kind": "Checkpoint", "metadata": meta, "spec": spec}


def _committed(store: Store, entry: str) -> tuple[layout.CheckpointName, str, Any] | None:
    """``(name, kind, metrics)`` of a committed entry; None for anything else."""
    name = layout.parse_committed(entry)
    if name is None:
        return None
    if name.format == "dir" and not store.exists(f"{entry}/{layout.MANIFEST_NAME}"):
        return None  # not committed (an s3 directory is committed by its manifest, last)
    try:
        found, _ = scan(store, entry, checksums=False)
    except VerifyError:
        if not store.exists(entry):
            return None  # deleted while we looked
        return name, "full", None  # registered anyway: verification marks it Invalid, visibly
    return name, found.kind, found.metrics


async def register_unknown(
    run: RunView,
    store: Store,
    index: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> int:
    """Create a Checkpoint for each committed entry that has none.

    The scan races with the finalizer deleting storage: an entry listed a moment ago may be
    gone now. Right before each create (after the last await) the live index and the set of
    just-deleted names are checked again; the finalizer notes a name as deleted before its
    object can leave the index, so no instant exists at which a deleted checkpoint is in
    neither, and no record pointing at nothing is created.
    """
    key = (run.namespace, run.name)

    def known() -> set[str]:
        return {c.name for c in index.get(key, [])}

    entries = await asyncio.to_thread(store.list_entries)
    snapshot = known()
    created = 0
    for entry in entries:
        name = layout.parse_committed(entry)
        if name is None:
            continue
        object_name = name.object_name(run.name)
        if object_name in snapshot or consumers.recently_deleted(run.namespace, object_name):
            continue
        found = await asyncio.to_thread(_committed, store, entry)
        if found is None:
            continue
        if object_name in known() or consumers.recently_deleted(run.namespace, object_name):
            continue
        body = checkpoint_object(run, *found)
        if await kubeapi.create_checkpoint(run.namespace, body):
            created += 1
            metrics.CHECKPOINTS_REGISTERED.inc()
            logger.info("registered %s found in the store", object_name)
    return created


def _age_s(store: Store, entry: str, now: datetime) -> float:
    try:
        return (now - store.modified(entry)).total_seconds()
    except (StoreError, FileNotFoundError):
        return 0.0


def sweep(
    store: Store,
    run: RunView,
    known: set[str],
    everything: bool,
    config: OperatorConfig,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> list[str]:
    """Remove uncommitted leftovers older than the grace period (all of them and unregistered
    committed entries too when ``everything``: the run is being deleted). Returns what went."""
    now = datetime.now(UTC)
    swept = []
    for entry in store.list_entries():
        name = layout.parse_committed(entry)
        if layout.is_temporary(entry):
            kind = "temporary"
        elif (
            name is not None
            and name.format == "dir"
            and not store.exists(f"{entry}/{layout.MANIFEST_NAME}")
        ):
            kind = "uncommitted"
        elif everything and name is not None and name.object_name(run.name) not in known:
            kind = "unregistered"
        else:
            continue
        if not everything and _age_s(store, entry, now) < config.sweep_grace_s:
            continue
        try:
            size = store.du(entry)
        except (OSError, StoreError):
            size = 0
        dry = "true" if config.sweep_dry_run else "false"
        metrics.ORPHANS_SWEPT.labels(kind, dry).inc()
        metrics.ORPHAN_BYTES_SWEPT.labels(kind, dry).inc(size)
        if config.sweep_dry_run:
            logger.info(
                "orphan sweep (dry run) would remove %s %s (%d bytes)", kind, store.uri(entry), size
            )
            continue
        try:
            store.remove(entry)
        except (OSError, StoreError) as exc:
            logger.warning("orphan sweep could not remove %s: %s", store.uri(entry), exc)
            continue
        logger.info("orphan sweep removed %s %s (%d bytes)", kind, store.uri(entry), size)
        swept.append(entry)
    return swept


@kopf.on.delete(*TRAINING_RUNS, id="delete-checkpoints")
async def delete_checkpoints(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Delete the run's checkpoints through their finalizer; wait until all are gone."""
    run = run_from_body(body)
    key = (run.namespace, run.name)
    requested: set[str] = set()
    while True:
        gone = consumers.wakeups.current(run.namespace, consumers.GONE)
        remaining = list(kwargs["lifecycle_by_run"].get(key, []))
        if not remaining:
            break
        for c in remaining:
            if not c.terminating and c.name not in requested:
                await kubeapi.delete_checkpoint(run.namespace, c.name)
                requested.add(c.name)
        await consumers.Wakeups.wait(gone, 10.0)
    try:
        store = await open_store(
            run.namespace, run.store_uri, run.secret_name, memo.config.allowed_roots
        )
    except StoreError as exc:
        logger.warning("store of run %s not swept: %s", run.name, exc)
        return
    entries = await asyncio.to_thread(store.list_entries)
    pods = kwargs.get("pods_by_namespace")
    held = [
        e
        for e in entries
        if (n := layout.parse_committed(e)) is not None
        and blocking_consumers(
            n.step, consumers.run_consumers(run, pods), datetime.now(UTC), run.report_timeout_s
        )
    ]
    if held:
        raise kopf.TemporaryError(
            f"unregistered checkpoints {', '.join(held)} still held by consumers", delay=10
        )
    await asyncio.to_thread(sweep, store, run, set(), True, memo.config, logger)
    _last_scan.pop(key, None)
