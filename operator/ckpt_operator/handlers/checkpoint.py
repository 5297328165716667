"""Checkpoint handlers: verification, and the finalizer that deletes storage only when safe.

Deleting a Checkpoint object is the only way storage goes (retention, run deletion, ``kubectl
delete ckpt`` and the plugin all delete the object). Kopf's finalizer ``ckpt.dev/storage-
protection`` keeps the object until :func:`release_storage` returns: it waits while
:func:`~ckpt_operator.policy.deletion.deletion_blockers` names a reason (shown in
``status.blockedBy``), then deletes the files (already missing counts as success) and lets Kopf
drop the finalizer.
A storage error leaves the record (condition ``DeleteFailed``, a Warning event) and retries
with backoff. After an operator restart Kopf calls the handler again; the indexes it decides on
are fully listed before any handler runs, so a restart never deletes anything unsafe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import conditions, names
from ckpt_operator.handlers import consumers, kubeapi
from ckpt_operator.handlers import store_scan as store_scan
from ckpt_operator.handlers.common import initial_status, resource
from ckpt_operator.policy.deletion import (
    RunView,
    checkpoint_view,
    consumers_of,
    deletion_blockers,
    seconds_until_change,
)
from ckpt_operator.storage import layout, manifest
from ckpt_operator.storage.open import CredentialsError, open_store
from ckpt_operator.storage.store import PathEscapeError, Store, StoreError

__all__ = ["store_scan"]

CHECKPOINTS = resource("checkpoints")
ANNOTATION_STORE = f"{names.GROUP}/store"
"""The store root a checkpoint was verified in: where its files are if its run is gone."""
ANNOTATION_STORE_SECRET = f"{names.GROUP}/store-secret"
VERIFIED = "Verified"
DELETE_FAILED = "DeleteFailed"
RUN_WAIT_RETRIES = 10
REFRESH_S = 10.0
"""While blocked, re-read the object this often (a force annotation added meanwhile)."""

log = logging.getLogger(__name__)


def _one(index: Any, key: Any) -> Any:
    """The single value of an index key, or None (keys are unique per object name)."""
    if index is None:
        return None
    values = list(index.get(key, []))
    return values[-1] if values else None


@kopf.on.create(*CHECKPOINTS, id="initialize")
@kopf.on.resume(*CHECKPOINTS, id="initialize")
async def initialize(status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """A phase and conditions within a moment, before a possibly long verification."""
    first = initial_status(
        status, meta.get("generation"), "Pending", VERIFIED, "Pending", "awaiting verification"
    )
    if first is not None:
        patch.status.update(first)
        metrics.RESOURCES_SEEN.labels("Checkpoint").inc()


def _result_status(
    status: kopf.Status, generation: int | None, ok: bool, reason: str, message: str
) -> dict[str, Any]:
    return {
        "phase": "Ready" if ok else "Invalid",
        "message": message,
        "observedGeneration": generation,
        "conditions": conditions.set_condition(
            status.get("conditions"),
            VERIFIED,
            "True" if ok else "False",
            reason,
            message,
            generation,
        ),
    }


@kopf.on.create(*CHECKPOINTS, id="verify")
@kopf.on.resume(*CHECKPOINTS, id="verify")
async def verify(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Check the files against the manifest (``verify: size|full``): Ready or Invalid."""
    if status.get("phase") in ("Ready", "Invalid", "Deleting"):
        return  # verified before a restart, or marked Invalid by the SDK at load time
    ns = namespace or ""
    generation = meta.get("generation")
    run: RunView | None = _one(kwargs.get("runs_by_key"), (ns, spec["run"]))
    if run is None:
        if retry < RUN_WAIT_RETRIES:
            raise kopf.TemporaryError(f"TrainingRun {spec['run']} not found yet", delay=1)
        patch.status.update(
            _result_status(
                status, generation, False, "RunNotFound", f"TrainingRun {spec['run']} not found"
            )
        )
        metrics.CHECKPOINTS_VERIFIED.labels("invalid").inc()
        return
    if not meta.get("ownerReferences") and run.uid:
        patch.metadata["ownerReferences"] = [owner_reference(run)]
    try:
        store = await open_store(ns, run.store_uri, run.secret_name, memo.config.allowed_roots)
    except CredentialsError as exc:
        raise kopf.TemporaryError(f"cannot open the store: {exc}", delay=10) from exc
    except StoreError as exc:
        patch.status.update(_result_status(status, generation, False, "StoreRefused", str(exc)))
        metrics.CHECKPOINTS_VERIFIED.labels("invalid").inc()
        return
    mode: manifest.VerifyMode = "size" if run.verify == "size" else "full"
    result = await asyncio.to_thread(manifest.verify, store, spec["path"], mode)
    patch.metadata.annotations[ANNOTATION_STORE] = store.root_uri
    if run.secret_name:
        patch.metadata.annotations[ANNOTATION_STORE_SECRET] = run.secret_name
    if result.ok:
        update = _result_status(status, generation, True, "Verified", f"{mode} verification passed")
        update.update(
            sizeBytes=result.size_bytes,
            digest=result.digest,
            verifiedAt=conditions.now_iso(),
        )
        metrics.CHECKPOINTS_VERIFIED.labels("ready").inc()
    else:
        reason = "Missing" if "missing" in result.reason else "VerificationFailed"
        update = _result_status(status, generation, False, reason, result.reason)
        logger.warning("checkpoint %s is invalid: %s", name, result.reason)
        metrics.CHECKPOINTS_VERIFIED.labels("invalid").inc()
    patch.status.update(update)


def owner_reference(run: RunView) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "name": run.name,
        "uid": run.uid,
        "controller": True,
    }


@kopf.on.event(*CHECKPOINTS)
async def wake_on_checkpoint_event(
    type: str | None, body: kopf.Body, namespace: str | None, **_: Any
) -> None:
    """A newer Ready checkpoint may release the previous newest; a gone one frees a run."""
    ns = namespace or ""
    if type == "DELETED":
        consumers.wakeups.notify(ns, consumers.GONE)
    elif (body.get("status") or {}).get("phase") == "Ready" and not body.meta.get(
        "deletionTimestamp"
    ):
        consumers.wakeups.notify(ns)


async def _store_of(
    ns: str, run: RunView | None, annotations: Mapping[str, str], memo: kopf.Memo
) -> Store | None:
    """The run's store, or, with the run gone, the one the checkpoint was verified in."""
    if run is not None and run.store_uri:
        return await open_store(ns, run.store_uri, run.secret_name, memo.config.allowed_roots)
    uri = annotations.get(ANNOTATION_STORE)
    if not uri:
        return None
    secret = annotations.get(ANNOTATION_STORE_SECRET)
    return await open_store(ns, uri, secret, memo.config.allowed_roots)


def remove_checkpoint(store: Store, path: str, fmt: str) -> None:
    """Delete one checkpoint's files; the manifest first, so a partial deletion is never
    mistaken for a committed checkpoint (readers and the scan ignore a directory without one)."""
    if fmt == "dir" and not path.endswith(layout.TAR_SUFFIX):
        store.remove(f"{path}/{layout.MANIFEST_NAME}")
    store.remove(path)


@kopf.on.delete(*CHECKPOINTS, id="storage")
async def release_storage(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    status: kopf.Status,
    memo: kopf.Memo,
    retry: int,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Wait while blocked, then delete the checkpoint's storage; Kopf drops the finalizer."""
    ns = namespace or ""
    current: Mapping[str, Any] = body
    shown = status.get("blockedBy") if status.get("phase") == "Deleting" else None
    loop = asyncio.get_running_loop()
    refreshed = loop.time()
    counted = False
    try:
        while True:
            wake = consumers.wakeups.current(ns)
            info = checkpoint_view(current)
            run: RunView | None = _one(kwargs.get("runs_by_key"), (ns, info.run))
            pods = kwargs.get("pods_by_namespace")
            found = consumers_of(
                info.run, run.selector if run else None, pods.get(ns, []) if pods else []
            )
            siblings = kwargs["lifecycle_by_run"].get((ns, info.run), [])
            now = datetime.now(UTC)
            blockers = deletion_blockers(info, run=run, siblings=siblings, consumers=found, now=now)
            if not blockers:
                break
            if blockers != shown or (current.get("status") or {}).get("phase") != "Deleting":
                logger.info("storage of %s held back: %s", name, "; ".join(blockers))
                await kubeapi.patch_checkpoint_status(
                    ns, name, {"phase": "Deleting", "blockedBy": blockers}
                )
                shown = blockers
            if not counted:
                metrics.DELETIONS_BLOCKED.inc()
                counted = True
            timeout = REFRESH_S
            change = seconds_until_change(info, found, now, run.report_timeout_s if run else 600.0)
            if change is not None:
                timeout = min(timeout, change + 0.5)
            await consumers.Wakeups.wait(wake, timeout)
            if loop.time() - refreshed >= REFRESH_S:
                fresh = await kubeapi.get_checkpoint(ns, name)
                if fresh is None:
                    return
                current, refreshed = fresh, loop.time()
    finally:
        if counted:
            metrics.DELETIONS_BLOCKED.dec()
    await _delete_storage(body, current, ns, name, run, memo, retry, patch, logger)


async def _delete_storage(
    body: kopf.Body,
    current: Mapping[str, Any],
    ns: str,
    name: str,
    run: RunView | None,
    memo: kopf.Memo,
    retry: int,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    info = checkpoint_view(current)
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    status = current.get("status") or {}
    try:
        store = await _store_of(ns, run, annotations, memo)
        if store is None:
            logger.warning(
                "no store is known for %s (run %s is gone): no files deleted", name, info.run
            )
            return
        where = store.root_uri + "/" + info.path
        await asyncio.to_thread(remove_checkpoint, store, info.path, info.format)
    except PathEscapeError as exc:
        # Never ours to delete: the record goes, the files outside the root stay untouched.
        kopf.warn(body, reason="StorageNotDeleted", message=str(exc))
        return
    except CredentialsError as exc:
        _failed(body, patch, status, retry, f"cannot open the store: {exc}")
    except StoreError as exc:
        kopf.warn(body, reason="StorageNotDeleted", message=str(exc))
        return
    except Exception as exc:  # OSError, s3 errors: keep the record, retry with backoff
        _failed(body, patch, status, retry, f"deleting {info.path}: {exc}")
    consumers.note_deleted(ns, name)
    metrics.CHECKPOINTS_DELETED.inc()
    metrics.BYTES_FREED.inc(info.size_bytes or 0)
    logger.info("deleted storage of %s at %s", name, where)


def _failed(
    body: kopf.Body, patch: kopf.Patch, status: Mapping[str, Any], retry: int, message: str
) -> None:
    metrics.DELETE_FAILURES.inc()
    kopf.warn(body, reason=DELETE_FAILED, message=message)
    patch.status["phase"] = "Deleting"
    patch.status["conditions"] = conditions.set_condition(
        status.get("conditions"), DELETE_FAILED, "True", "StorageError", message, None
    )
    raise kopf.TemporaryError(message, delay=min(60.0, 2.0**retry))
