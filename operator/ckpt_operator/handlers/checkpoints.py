"""Checkpoint handlers: an initial status at once, then verification against the manifest.

A Checkpoint becomes ``Ready`` only when the operator has checked its files against its
manifest (``verify: size|full`` of its run), ``Invalid`` with the reason otherwise (verified
resume: nothing else is ever resumed from). ``kubectl ckpt verify`` asks for it again with the
``verify.ckpt.dev/requested-at`` annotation. One that is not the record of its files (its path
contradicts its spec, or another Checkpoint records them: :mod:`ckpt_operator.policy.records`)
is ``Invalid`` without looking at storage.

Creation handlers only, no resume handlers: Kopf runs creation handlers for objects created
while the operator was down (they carry no record of being handled) and continues ones a crash
interrupted, so resume handlers would only cost a call (and a patch) per checkpoint at every
operator start — 50,000 of them in a large cluster. A verification request made while the
operator was down is a change it has not handled yet: it is served when the operator starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import conditions, names
from ckpt_operator.handlers.indexes import CheckpointsByFiles, RunsByKey, one
from ckpt_operator.handlers.runtime import Logger, runtime
from ckpt_operator.handlers.selectors import CHECKPOINTS
from ckpt_operator.kube import client as kube
from ckpt_operator.kube.objects import owner_reference
from ckpt_operator.policy import records
from ckpt_operator.storage import manifest
from ckpt_operator.storage.open import CredentialsError, open_store
from ckpt_operator.storage.store import StoreError
from ckpt_operator.views.checkpoint import (
    VERIFIED,
    VERIFIED_REASON,
    CheckpointInfo,
    operator_verified,
)
from ckpt_operator.views.run import RunView

RUN_WAIT_RETRIES = 10
UNREADABLE = "Unreadable"
"""The Warning's reason when the files could not be read (no verdict: verified again)."""


@kopf.on.create(*CHECKPOINTS, id="initialize")
async def initialize(status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """A phase and conditions within a moment, before a possibly long verification."""
    if status.get("phase"):
        return
    generation = meta.get("generation")
    patch.status.update(
        phase="Pending",
        observedGeneration=generation,
        conditions=conditions.set_condition(
            status.get("conditions"),
            VERIFIED,
            "Unknown",
            "Pending",
            "awaiting verification",
            generation,
        ),
    )
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


@kopf.on.create(*CHECKPOINTS, id="verify")  # type: ignore[arg-type]  # see indexes
async def verify(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    retry: int,
    runs_by_key: RunsByKey,
    checkpoints_by_files: CheckpointsByFiles,
    logger: Logger,
    **_: Any,
) -> None:
    """Check the files against the manifest (``verify: size|full``): Ready or Invalid.

    A Ready this operator did not write (no record of its verification) is verified again:
    only the operator decides what is Ready. Invalid and Deleting are kept; they only ever
    take a checkpoint out of use.
    """
    phase = status.get("phase")
    if phase in ("Invalid", "Deleting") or operator_verified(status, meta.get("generation")):
        return  # verified before a restart, or already out of use
    if phase == "Ready":
        logger.warning("checkpoint %s is Ready without the operator's verification", name)
    info = CheckpointInfo.from_body(body)
    run = one(runs_by_key, (namespace or "", info.run))
    if run is None and retry < RUN_WAIT_RETRIES:
        raise kopf.TemporaryError(f"TrainingRun {info.run} not found yet", delay=1)
    metadata: dict[str, Any] = {}
    if run is not None and not meta.get("ownerReferences") and run.uid:
        metadata["ownerReferences"] = [owner_reference(run.name, run.uid)]
    async with runtime(memo).verification(namespace or "", name):
        update, annotations = await _check(
            body, info, checkpoints_by_files, run, memo, retry, logger
        )
        # Written here, in this order, not through Kopf's patch: Kopf writes the body (with
        # its "handled" mark) before the status, so a crash between the two would leave a
        # Checkpoint marked handled that is never verified (crash convergence). Where the
        # files are comes first: it is trusted only once the status below says the operator
        # verified them.
        if annotations:
            metadata["annotations"] = annotations
        if metadata:
            await kube.patch_metadata(names.CHECKPOINTS, namespace or "", name, metadata)
        await kube.patch_status(names.CHECKPOINTS, namespace or "", name, update)


@kopf.on.field(  # type: ignore[arg-type]  # see indexes
    *CHECKPOINTS,
    id="reverify",
    field=("metadata", "annotations", names.ANNOTATION_VERIFY_REQUESTED),
    new=kopf.PRESENT,
)
async def reverify(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    runs_by_key: RunsByKey,
    checkpoints_by_files: CheckpointsByFiles,
    logger: Logger,
    **_: Any,
) -> None:
    """Verify again on request; the outcome is written before the request is removed, so
    whoever waits for the removal reads the answer."""
    if status.get("phase") != "Deleting":
        info = CheckpointInfo.from_body(body)
        run = one(runs_by_key, (namespace or "", info.run))
        async with runtime(memo).verification(namespace or "", name):
            update, annotations = await _check(
                body, info, checkpoints_by_files, run, memo, retry, logger
            )
            await kube.patch_status(names.CHECKPOINTS, namespace or "", name, update)
        patch.metadata.annotations.update(annotations)
    patch.metadata.annotations[names.ANNOTATION_VERIFY_REQUESTED] = None


async def _check(
    body: kopf.Body,
    info: CheckpointInfo,
    checkpoints_by_files: CheckpointsByFiles,
    run: RunView | None,
    memo: kopf.Memo,
    retry: int,
    logger: Logger,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Verify now: the status update and the annotations saying where the files are; files
    that cannot be read are retried with backoff (a Warning each time), never judged."""
    meta, status = body.meta, body.status
    generation = meta.get("generation")

    def invalid(reason: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
        logger.warning("checkpoint %s is invalid: %s", info.name, message)
        metrics.CHECKPOINTS_VERIFIED.labels("invalid").inc()
        return _result_status(status, generation, False, reason, message), {}

    same = checkpoints_by_files.get((info.namespace, info.run, info.path), ())
    problem = records.not_record(info, same)
    if problem is not None:  # verified resume: no trust in a spec its path contradicts
        return invalid(problem.reason, problem.message)
    if run is None:
        return invalid("RunNotFound", f"TrainingRun {info.run} not found")
    try:
        store = await open_store(
            run.namespace, run.store_uri, run.secret_name, memo.config.allowed_roots
        )
    except CredentialsError as exc:
        raise kopf.TemporaryError(f"cannot open the store: {exc}", delay=10) from exc
    except StoreError as exc:
        return invalid("StoreRefused", str(exc))
    mode: manifest.VerifyMode = "size" if run.verify == "size" else "full"
    result = await asyncio.to_thread(manifest.verify, store, info.path, mode)
    if result.retryable:  # an I/O error is no verdict: a good checkpoint must not turn Invalid
        kopf.warn(body, reason=UNREADABLE, message=f"verifying again: {result.reason}")
        raise kopf.TemporaryError(result.reason, delay=min(60.0, 2.0**retry))
    annotations = {names.ANNOTATION_STORE: store.root_uri}
    if run.secret_name:
        annotations[names.ANNOTATION_STORE_SECRET] = run.secret_name
    if result.ok:
        update = _result_status(
            status, generation, True, VERIFIED_REASON, f"{mode} verification passed"
        )
        update.update(sizeBytes=result.size_bytes, digest=result.digest)
        metrics.CHECKPOINTS_VERIFIED.labels("ready").inc()
    else:
        reason = "Missing" if "missing" in result.reason else "VerificationFailed"
        update, _ = invalid(reason, result.reason)
    update["verifiedAt"] = conditions.now_iso()
    return update, annotations
