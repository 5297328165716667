"""Attached runs (``spec.workload``): one Kopf daemon per run mirrors its pods into status.

The run's pods are another controller's (a Job, a JobSet); this daemon never creates or
deletes one. The admission webhook (:mod:`.admission`) records each new attempt as its first
pod is created; this daemon follows the attempts from the ``attempt_pods`` index (the webhook
labels every pod it admits with ``ckpt.dev/attempt``) through
:func:`~ckpt_operator.policy.observed.observe`, so ``status`` shows attempts, exit codes and
``latestCheckpoint``, and everything reading status (retention, the resume-target protection of
safe deletion, consumer-gated GC) works as for the runs the operator drives itself.

Woken like the run controller (:class:`~.wakeups.RunWakeups`: its pods, its checkpoints, the run
itself). Its status writes carry the ``resourceVersion`` they were computed from, as the
webhook's do, so the two never overwrite each other: a refused write is decided again on a
fresh read. Its start also tells admission that Kopf's indexes are complete (Kopf starts
daemons only after listing every indexed resource).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from ckpt_operator.api import names
from ckpt_operator.api.models import TrainingRunSpec, TrainingRunStatus
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers.indexes import AttemptPods, CheckpointsByRun
from ckpt_operator.handlers.runtime import Logger, runtime
from ckpt_operator.handlers.selectors import TRAINING_RUNS, attached
from ckpt_operator.kube import client as kube
from ckpt_operator.policy.observed import announcements, observe
from ckpt_operator.policy.run_state import INVALID_SPEC, STORE_NOT_ALLOWED, Note
from ckpt_operator.storage.store import Store, StoreError

RESYNC_S = 30.0
STATUS_FIELDS = tuple(field.alias or name for name, field in TrainingRunStatus.model_fields.items())


async def _reconcile(
    body: Mapping[str, Any],
    config: OperatorConfig,
    pod_index: AttemptPods,
    checkpoint_index: CheckpointsByRun,
    logger: Logger,
) -> tuple[float | None, bool]:
    """One pass; returns (monotonic time to look again at, whether a write was refused)."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None, False
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    status = TrainingRunStatus.model_validate(body.get("status") or {})
    uid = str(meta.get("uid", ""))
    pods = [p for p in pod_index.get((namespace, name), []) if p.owner_uid != uid]
    root, invalid = _store_root(body.get("spec") or {}, config)
    now = datetime.now(UTC)
    found = observe(
        status,
        pods,
        list(checkpoint_index.get((namespace, name), [])),
        root,
        now,
        meta.get("generation"),
        invalid,
    )
    desired = found.status.wire()
    if desired != status.wire():
        wanted = {key: desired.get(key) for key in STATUS_FIELDS}
        version = str(meta.get("resourceVersion", ""))
        try:
            written = await kube.patch_status(
                names.TRAINING_RUNS, namespace, name, wanted, resource_version=version
            )
        except Exception as exc:
            if kube.status_of(exc) == 409:
                return time.monotonic(), True
            raise
        if written is not None:
            _post(written, found.notes, logger)
    return _wake(found.wake_at, now), False


def _wake(when: datetime | None, now: datetime) -> float | None:
    if when is None:
        return None
    return time.monotonic() + max(0.0, (when - now).total_seconds())


def _post(body: Mapping[str, Any], notes: Iterable[Note], logger: Logger) -> None:
    for note in notes:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, body)),
            type=note.type,
            reason=note.reason,
            message=note.message,
        )
        level = logging.WARNING if note.type == "Warning" else logging.INFO
        logger.log(level, "%s: %s", note.reason, note.message)


def _store_root(
    raw_spec: Mapping[str, Any], config: OperatorConfig
) -> tuple[str, tuple[str, str] | None]:
    """The run's store root URI, or why the run cannot be served (the webhook refuses too)."""
    try:
        spec = TrainingRunSpec.model_validate(raw_spec)
    except ValidationError as exc:
        return "", (INVALID_SPEC, str(exc.errors()[0]["msg"]))
    try:
        return Store.from_uri(spec.store.uri, allowed_roots=config.allowed_roots).root_uri, None
    except StoreError as exc:
        return "", (STORE_NOT_ALLOWED, str(exc))


@kopf.daemon(*TRAINING_RUNS, id="observe", cancellation_timeout=5.0, when=attached)  # type: ignore[arg-type]  # see indexes
async def observe_attempts(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    attempt_pods: AttemptPods,
    checkpoints_by_run: CheckpointsByRun,
    logger: Logger,
    **_: Any,
) -> None:
    """Mirror the run's pods into its status until it is deleted."""
    state = runtime(memo)
    state.indexed.set()
    key = (body.metadata.namespace or "", body.metadata.name or "")
    wake = state.run_wakeups.register(key)
    failures = 0
    current: Mapping[str, Any] = body
    # Attempts opened before this daemon started were announced by its predecessor (or lost
    # with it: events are best effort); the rest are announced once each.
    announced = {a.attempt for a in TrainingRunStatus.model_validate(body.status).attempts}
    try:
        while not stopped:
            wake.clear()
            status = TrainingRunStatus.model_validate(body.status)
            for attempt, note in announcements(status, announced):
                _post(body, [note], logger)
                announced.add(attempt)
            try:
                wake_at, refused = await _reconcile(
                    current, memo.config, attempt_pods, checkpoints_by_run, logger
                )
                failures = 0
                # A refused write was decided on a stale view: read the run and decide again.
                fresh = await kube.get(names.TRAINING_RUNS, *key) if refused else None
                current = fresh if fresh is not None else body
                if refused:
                    continue
            except Exception as exc:
                if kube.status_of(exc) == 404:
                    return
                failures += 1
                delay = min(30.0, 0.25 * 2**failures)
                logger.warning("observing failed (retry in %.1f s): %s", delay, exc)
                wake_at = time.monotonic() + delay
            timeout = RESYNC_S if wake_at is None else max(0.0, wake_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
    finally:
        state.run_wakeups.forget(key, wake)
