"""The finalizer that deletes a checkpoint's storage, and only when it is safe.

Deleting a Checkpoint object is the only way storage goes (retention, run deletion, ``kubectl
delete ckpt`` and the plugin all delete the object). Kopf's finalizer ``ckpt.dev/storage-
protection`` keeps the object until :func:`release_storage` returns: it waits while
:func:`~ckpt_operator.policy.deletion.blockers` names a reason (shown in
``status.blockedBy``), then deletes the files (already missing counts as success) and lets Kopf
drop the finalizer. A storage error leaves the record (condition ``DeleteFailed``, a Warning
event) and retries with backoff. After an operator restart Kopf calls the handler again; the
indexes it decides on are fully listed before any handler runs, so a restart never deletes
anything unsafe (safe deletion, crash convergence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import conditions, names
from ckpt_operator.handlers.consumers import run_consumers
from ckpt_operator.handlers.indexes import (
    AttemptPods,
    CheckpointsByFiles,
    CheckpointsByName,
    ConsumersByRun,
    PodsByNamespace,
    RunsByKey,
    one,
)
from ckpt_operator.handlers.runtime import Logger, Runtime, runtime
from ckpt_operator.handlers.selectors import CHECKPOINTS
from ckpt_operator.handlers.wakeups import DeletionSignals
from ckpt_operator.kube import client as kube
from ckpt_operator.policy import records
from ckpt_operator.policy.consumers import seconds_until_change
from ckpt_operator.policy.deletion import blockers, is_newest
from ckpt_operator.storage import layout
from ckpt_operator.storage.open import CredentialsError, open_store
from ckpt_operator.storage.store import PathEscapeError, Store, StoreError
from ckpt_operator.views import fields
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.run import DEFAULT_REPORT_TIMEOUT_S, RunView

DELETE_FAILED = "DeleteFailed"
STORAGE_KEPT = "StorageKept"
REFRESH_S = 10.0
"""While blocked, re-read the object this often (a force annotation added meanwhile)."""


@kopf.on.delete(*CHECKPOINTS, id="storage")  # type: ignore[arg-type]  # see indexes
async def release_storage(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    status: kopf.Status,
    memo: kopf.Memo,
    retry: int,
    patch: kopf.Patch,
    runs_by_key: RunsByKey,
    attempt_pods: AttemptPods,
    checkpoints_by_name: CheckpointsByName,
    checkpoints_by_files: CheckpointsByFiles,
    consumers_by_run: ConsumersByRun,
    pods_by_namespace: PodsByNamespace,
    logger: Logger,
    **_: Any,
) -> None:
    """Wait while blocked, then delete the checkpoint's storage; Kopf drops the finalizer."""
    ns = namespace or ""
    state = runtime(memo)
    current: Mapping[str, Any] = body
    shown = status.get("blockedBy") if status.get("phase") == "Deleting" else None
    loop = asyncio.get_running_loop()
    refreshed = loop.time()
    counted: set[str] = set()
    try:
        while True:
            wake = state.signals.current(ns)
            info = CheckpointInfo.from_body(current)
            same = list(checkpoints_by_files.get((ns, info.run, info.path), ()))
            problem = records.not_record(info, same)
            if problem is not None:
                # Not the record of any files (a duplicate, a path its spec contradicts): the
                # object goes, the files stay with their record (safe deletion).
                message = f"files not deleted: {problem.message}"
                kopf.event(body, type="Normal", reason=STORAGE_KEPT, message=message)
                logger.info("%s is not a record of files; only the object goes", name)
                return
            run = one(runs_by_key, (ns, info.run))
            if run is not None:
                run = state.protected(run, attempt_pods.get((ns, info.run), []))
            found = run_consumers(run or RunView(info.run, ns), consumers_by_run, pods_by_namespace)
            now = datetime.now(UTC)

            def newest(c: CheckpointInfo) -> bool:
                live = lambda name: one(checkpoints_by_name, (ns, name))  # noqa: E731
                return is_newest(c, lambda full_only: state.newest.newer_exists(c, full_only, live))

            held = blockers(
                info,
                run=run,
                # Another Checkpoint naming the same files (a duplicate) protects them too.
                newest=any(newest(c) for c in [info, *same]),
                consumers=found,
                now=now,
                aliases=records.aliases(info, same),
            )
            if not held:
                break
            if held != shown or (current.get("status") or {}).get("phase") != "Deleting":
                logger.info("storage of %s held back: %s", name, "; ".join(held))
                await kube.patch_status(
                    names.CHECKPOINTS, ns, name, {"phase": "Deleting", "blockedBy": held}
                )
                shown = held
            kinds = metrics.blocker_kinds(held)
            for kind in kinds - counted:
                metrics.DELETIONS_BLOCKED.labels(kind).inc()
            for kind in counted - kinds:
                metrics.DELETIONS_BLOCKED.labels(kind).dec()
            counted = kinds
            timeout_s = run.report_timeout_s if run else DEFAULT_REPORT_TIMEOUT_S
            change = seconds_until_change(info.step, found, now, timeout_s)
            await DeletionSignals.wait(
                wake, REFRESH_S if change is None else min(REFRESH_S, change + 0.5)
            )
            if loop.time() - refreshed >= REFRESH_S:
                fresh = await kube.get(names.CHECKPOINTS, ns, name)
                if fresh is None:
                    return
                current, refreshed = fresh, loop.time()
    finally:
        for kind in counted:
            metrics.DELETIONS_BLOCKED.labels(kind).dec()
    await _delete_storage(body, current, ns, name, run, memo, state, retry, patch, logger)


async def _store_of(
    ns: str,
    run: RunView | None,
    info: CheckpointInfo,
    annotations: Mapping[str, str],
    memo: kopf.Memo,
) -> Store | None:
    """The run's store, or, with the run gone, the one the checkpoint was verified in.

    Only a verified checkpoint's annotation is trusted: one never verified (its run was never
    found, say) may carry an annotation its author chose, naming another run's store.
    """
    if run is not None and run.store_uri:
        return await open_store(ns, run.store_uri, run.secret_name, memo.config.allowed_roots)
    if not info.was_verified:
        return None
    uri = annotations.get(names.ANNOTATION_STORE)
    if not uri:
        return None
    secret = annotations.get(names.ANNOTATION_STORE_SECRET)
    return await open_store(ns, uri, secret, memo.config.allowed_roots)


def remove_checkpoint(store: Store, path: str, fmt: str) -> None:
    """Delete one checkpoint's files; the manifest first, so a partial deletion is never
    mistaken for a committed checkpoint (readers and the scan ignore a directory without one)."""
    if fmt != "tar" and not path.endswith(layout.TAR_SUFFIX):
        store.remove(f"{path}/{layout.MANIFEST_NAME}")
    store.remove(path)


async def _delete_storage(
    body: kopf.Body,
    current: Mapping[str, Any],
    ns: str,
    name: str,
    run: RunView | None,
    memo: kopf.Memo,
    state: Runtime,
    retry: int,
    patch: kopf.Patch,
    logger: Logger,
) -> None:
    info = CheckpointInfo.from_body(current)
    annotations = fields.string_map(fields.mapping(current.get("metadata")).get("annotations"))
    status = fields.mapping(current.get("status"))
    try:
        store = await _store_of(ns, run, info, annotations, memo)
        if store is None:
            kopf.warn(
                body,
                reason="StorageNotDeleted",
                message=f"no store is known for {name} (run {info.run} is gone and it was "
                "never verified): no files deleted",
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
    state.recently_deleted.note(ns, name)
    if info.canonical_name:  # recorded under another name: the scan must not register it
        state.recently_deleted.note(ns, info.canonical_name)
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
