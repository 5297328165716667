"""The TrainingRun controller: one Kopf daemon per run carries out :func:`attempts.next_step`.

Why a daemon: it is the single writer of the run's attempt state, woken at once by anything
relevant (its attempt pods, its checkpoints, the run itself) and by its own backoff deadline,
so a restart takes one status write and one pod creation, sent together, after the pod's
Failed event, with no timer interval on the path. Everything it decides on comes from status
and Kopf indexes, so the cost of a restart does not grow with the number of checkpoints, and a
freshly started operator (indexes are fully listed before any daemon starts) converges from
whatever instant the previous one was killed at.

Status writes carry the ``resourceVersion`` they were computed from, so a write based on a
stale view is refused (409) and recomputed instead of clobbering a concurrent one; the lists
(``attempts``, ``conditions``) are always written whole from that same view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.api.models import CheckpointRef, TrainingRunSpec, TrainingRunStatus
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers import pods
from ckpt_operator.handlers.common import resource
from ckpt_operator.policy import attempts
from ckpt_operator.policy.attempts import AttemptPod, RunState, Step
from ckpt_operator.storage.open import api_client
from ckpt_operator.storage.store import Store, StoreError
from ckpt_operator.views.checkpoint import CheckpointInfo

__all__ = ["pods"]

TRAINING_RUNS = resource("trainingruns")
CHECKPOINTS = resource("checkpoints")
RESYNC_S = 30.0
"""Look again this often even when nothing wakes the controller (a missed watch event)."""
CREATED_GRACE_S = 30.0
"""How long a pod we created counts as existing before the index shows it."""
CHECKPOINT_COALESCE_S = 0.5
"""Checkpoint changes refresh ``latestCheckpoint`` at most this often per run."""
MERGE = "application/merge-patch+json"
STATUS_FIELDS = tuple(field.alias or name for name, field in TrainingRunStatus.model_fields.items())

RunKey = tuple[str, str]


class RunController:
    """Reconciles one TrainingRun; created and run by :func:`run_attempts`."""

    def __init__(
        self,
        body: kopf.Body,
        config: OperatorConfig,
        pod_index: Any,
        checkpoint_index: Any,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.body = body
        self.namespace = body.metadata.namespace or ""
        self.name = body.metadata.name or ""
        self.key: RunKey = (self.namespace, self.name)
        self.config = config
        self.pod_index = pod_index
        self.checkpoint_index = checkpoint_index
        self.logger = logger
        self.created: dict[int, tuple[float, CheckpointRef | None]] = {}
        self.written: tuple[str, Mapping[str, Any]] | None = None
        self.rejected: tuple[int | None, str] | None = None
        self.stores: dict[str, tuple[str, str | None]] = {}

    async def run(self, stopped: kopf.DaemonStopped) -> None:
        wake = pods.wakeups.register(self.key)
        failures = 0
        try:
            while not stopped:
                wake.clear()
                try:
                    wake_at = await self.reconcile()
                    failures = 0
                except _Retry:
                    failures += 1
                    if failures < 5:
                        continue  # lost a write race: decide again on the fresh body now
                    wake_at = time.monotonic() + 0.5
                except Exception as exc:
                    if _status_of(exc) == 404:
                        return  # the run is gone; Kopf stops us too
                    failures += 1
                    delay = min(30.0, 0.25 * 2**failures)
                    self.logger.warning("reconcile failed (retry in %.1f s): %s", delay, exc)
                    wake_at = time.monotonic() + delay
                timeout = RESYNC_S if wake_at is None else max(0.0, wake_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        finally:
            pods.wakeups.forget(self.key, wake)

    # --- reading ----------------------------------------------------------------------------

    def current(self) -> Mapping[str, Any]:
        """The freshest body known: our last write until the watch delivers it or newer."""
        if self.written is not None and self.live_version() == self.written[0]:
            return self.written[1]
        self.written = None
        return self.body

    def live_version(self) -> str:
        return str((self.body.get("metadata") or {}).get("resourceVersion", ""))

    def store_root(self, uri: str) -> tuple[str, str | None]:
        """``(root URI, None)`` or ``("", why not)``; cached, the check touches no storage."""
        cached = self.stores.get(uri)
        if cached is None:
            try:
                root = Store.from_uri(uri, allowed_roots=self.config.allowed_roots).root_uri
                cached = (root, None)
            except StoreError as exc:
                cached = ("", str(exc))
            self.stores = {uri: cached}
        return cached

    def validate(
        self, raw_spec: Mapping[str, Any], generation: int | None
    ) -> tuple[TrainingRunSpec | None, str, tuple[str, str] | None]:
        """The parsed spec, the store root, and why the run cannot proceed (or None)."""
        try:
            spec = TrainingRunSpec.model_validate(raw_spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, "", (attempts.INVALID_SPEC, f"spec.{where}: {first['msg']}")
        root, error = self.store_root(spec.store.uri)
        if error is not None:
            return spec, root, (attempts.STORE_NOT_ALLOWED, error)
        problem = attempts.validate_template(raw_spec.get("template") or {})
        if problem is not None:
            return spec, root, (attempts.INVALID_TEMPLATE, problem)
        if self.rejected is not None and self.rejected[0] == generation:
            return spec, root, (attempts.INVALID_TEMPLATE, self.rejected[1])
        return spec, root, None

    def attempt_pods(self, uid: str) -> dict[int, AttemptPod]:
        """The run's pods from the index, plus those we created that it has not shown yet."""
        found = attempts.pods_by_attempt(self.pod_index.get(self.key, []), uid)
        now = time.monotonic()
        for attempt, (when, resumed_from) in list(self.created.items()):
            if attempt in found or now - when > CREATED_GRACE_S:
                del self.created[attempt]
            else:
                found[attempt] = AttemptPod(
                    name=names.attempt_pod_name(self.name, attempt),
                    namespace=self.namespace,
                    run=self.name,
                    attempt=attempt,
                    owner_uid=uid,
                    resumed_from=resumed_from,
                )
        return found

    # --- acting -----------------------------------------------------------------------------

    async def reconcile(self) -> float | None:
        """One pass; returns the monotonic time to look again at (None: when woken)."""
        body = self.current()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None
        generation = meta.get("generation")
        raw_status = body.get("status") or {}
        status = TrainingRunStatus.model_validate(raw_status)
        spec, root, invalid = self.validate(body.get("spec") or {}, generation)
        checkpoints: list[CheckpointInfo] = list(self.checkpoint_index.get(self.key, []))
        now = datetime.now(UTC)
        step = attempts.next_step(
            RunState(
                name=self.name,
                namespace=self.namespace,
                generation=generation,
                spec=spec,
                status=status,
                pods=self.attempt_pods(str(meta.get("uid", ""))),
                checkpoints=checkpoints,
                store_root=root,
                now=now,
                invalid=invalid,
            )
        )
        if step.create is None or spec is None:
            await self.write(body, status, step)
        else:
            # The write and the creation go out together: the pod is named by its attempt, and
            # next_step adopts a pod whose recording write was lost (see attempts.py).
            # The pod goes first: it is what the next attempt waits for.
            created, wrote = await asyncio.gather(
                self.create_pod(body, step, root),
                self.write(body, status, step),
                return_exceptions=True,
            )
            for outcome in (wrote, created):
                if isinstance(outcome, BaseException):
                    raise outcome
            if isinstance(created, float):
                return created
        if step.wake_at is None:
            return None
        return time.monotonic() + max(0.0, (step.wake_at - datetime.now(UTC)).total_seconds())

    async def write(
        self, body: Mapping[str, Any], status: TrainingRunStatus, step: Step
    ) -> Mapping[str, Any]:
        """Write the step's status if it changed, then post its events; returns the body."""
        desired = step.status.wire()
        if desired == status.wire():
            return body
        from kubernetes_asyncio import client

        meta = body.get("metadata") or {}
        version = str(meta.get("resourceVersion", ""))
        patch = {
            "metadata": {"resourceVersion": version},
            "status": {key: desired.get(key) for key in STATUS_FIELDS},
        }
        api: Any = client.CustomObjectsApi(await api_client())
        try:
            response: dict[str, Any] = await api.patch_namespaced_custom_object_status(
                names.GROUP,
                names.VERSION,
                self.namespace,
                "trainingruns",
                self.name,
                patch,
                _content_type=MERGE,
            )
        except Exception as exc:
            if _status_of(exc) == 409:
                # Our view is stale: read the current object and decide again at once.
                fresh = await api.get_namespaced_custom_object(
                    names.GROUP, names.VERSION, self.namespace, "trainingruns", self.name
                )
                self.written = (self.live_version(), fresh)
                raise _Retry from exc
            raise
        self.written = (self.live_version(), response)
        if not status.phase:
            metrics.RESOURCES_SEEN.labels("TrainingRun").inc()
        for note in step.notes:
            kopf.event(
                kopf.Body(cast(kopf.RawBody, response)),
                type=note.type,
                reason=note.reason,
                message=note.message,
            )
            self.logger.log(
                logging.WARNING if note.type == "Warning" else logging.INFO,
                "%s: %s",
                note.reason,
                note.message,
            )
        return response

    async def create_pod(self, body: Mapping[str, Any], step: Step, root: str) -> float | None:
        """Create the step's attempt pod; a conflict means it exists, which is fine."""
        from kubernetes_asyncio import client

        assert step.create is not None
        meta = body.get("metadata") or {}
        pod = attempts.build_pod(
            run=self.name,
            namespace=self.namespace,
            run_uid=str(meta.get("uid", "")),
            template=(body.get("spec") or {}).get("template") or {},
            attempt=step.create,
            store_root=root,
            plan=step.plan,
        )
        core: Any = client.CoreV1Api(await api_client())
        try:
            # Unparsed: turning the echoed pod into a V1Pod model costs more than the request.
            response = await core.create_namespaced_pod(self.namespace, pod, _preload_content=False)
            data = await response.read()
            if not 200 <= response.status <= 299:
                raise client.exceptions.ApiException(status=response.status, reason=data[:2048])
        except Exception as exc:
            code = _status_of(exc)
            if code == 409:
                mine = attempts.pods_by_attempt(
                    self.pod_index.get(self.key, []), str(meta.get("uid", ""))
                )
                if step.create not in mine and any(
                    p.attempt == step.create for p in self.pod_index.get(self.key, [])
                ):
                    self.logger.warning(
                        "pod %s exists but belongs to another run; waiting for it to go",
                        pod["metadata"]["name"],
                    )
                    return time.monotonic() + 2.0
            elif code in (400, 422):
                message = _api_message(exc)
                self.logger.warning("the API refused attempt pod: %s", message)
                self.rejected = (meta.get("generation"), f"the API refused the pod: {message}")
                return time.monotonic()
            else:
                raise
        self.created[step.create] = (
            time.monotonic(),
            attempts.checkpoint_ref(step.plan.target, root),
        )
        return None


class _Retry(Exception):
    """The status write lost a race; reconcile again with the fresh body."""


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _api_message(exc: BaseException) -> str:
    raw = getattr(exc, "body", None) or getattr(exc, "reason", None) or "{}"
    try:
        message = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc)[:1024]


@kopf.daemon(*TRAINING_RUNS, id="attempts", cancellation_timeout=5.0)
async def run_attempts(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Drive the run's attempts until it is deleted (Kopf stops daemons on deletion).

    The indexes come in ``kwargs`` (Kopf passes every index by name) and are live views.
    """
    controller = RunController(
        body, memo.config, kwargs["attempt_pods"], kwargs["checkpoints_by_run"], logger
    )
    await controller.run(stopped)


@kopf.on.event(*TRAINING_RUNS)
async def run_changed(namespace: str | None, name: str | None, **_: Any) -> None:
    """A spec edit or a status write by someone else: let the controller look again."""
    pods.wakeups.kick((namespace or "", name or ""))


@kopf.on.event(*CHECKPOINTS)
async def checkpoint_seen(namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
    """A checkpoint appeared, was verified, invalidated or deleted: it changes
    ``latestCheckpoint``. No restart waits for this (a failed pod wakes its run at once, and the
    plan is made from the index then), so these wakeups are coalesced."""
    pods.wakeups.kick_soon((namespace or "", str(spec.get("run", ""))), CHECKPOINT_COALESCE_S)
