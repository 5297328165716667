"""The TrainingRun controller: one Kopf daemon per run carries out :func:`attempts.next_step`.

Why a daemon: it is the single writer of the run's attempt state, woken at once by anything
relevant (its attempt pods, its checkpoints, the run itself) and by its own backoff deadline,
so a restart takes one status write and the pods' creation, sent together, after a pod's
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
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.api.models import TrainingRunSpec, TrainingRunStatus
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers.indexes import AttemptPods, CheckpointsByRun
from ckpt_operator.handlers.runtime import Logger, runtime
from ckpt_operator.handlers.selectors import TRAINING_RUNS, managed
from ckpt_operator.handlers.wakeups import RunWakeups
from ckpt_operator.kube import client as kube
from ckpt_operator.kube.trainer import build_pod, build_service, validate_template
from ckpt_operator.policy import attempts, run_state
from ckpt_operator.policy.attempts import RunState, Step
from ckpt_operator.policy.resume import Resume
from ckpt_operator.storage.store import Store, StoreError
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod
from ckpt_operator.views.run import LIVE_ATTEMPT_PHASES, RunKey

RESYNC_S = 30.0
"""Look again this often even when nothing wakes the controller (a missed watch event)."""
CREATED_GRACE_S = 30.0
"""How long a pod we created counts as existing before the index shows it (and one we deleted
as going): no request is sent twice for the same change."""
STATUS_FIELDS = tuple(field.alias or name for name, field in TrainingRunStatus.model_fields.items())


class RunController:
    """Reconciles one TrainingRun; created and run by :func:`run_attempts`."""

    def __init__(
        self,
        body: kopf.Body,
        config: OperatorConfig,
        wakeups: RunWakeups,
        pod_index: AttemptPods,
        checkpoint_index: CheckpointsByRun,
        claims: dict[RunKey, frozenset[str]],
        logger: Logger,
    ) -> None:
        self.body = body
        self.namespace = body.metadata.namespace or ""
        self.name = body.metadata.name or ""
        self.key: RunKey = (self.namespace, self.name)
        self.config = config
        self.wakeups = wakeups
        self.pod_index = pod_index
        self.checkpoint_index = checkpoint_index
        self.claims = claims
        self.logger = logger
        self.created: dict[tuple[int, int], tuple[float, Resume]] = {}
        """Workers we created, by (attempt, rank), until the index shows them."""
        self.deleting: dict[str, float] = {}
        """Workers we asked to delete, until the index shows them Terminating or gone."""
        self.written: tuple[str, Mapping[str, Any]] | None = None
        self.rejected: tuple[int | None, str] | None = None
        self.stores: dict[str, tuple[str, str | None]] = {}
        self.num_nodes = 1
        self.failed_seen: dict[int, float] = {}
        """When we first saw each failed attempt fail, for the time-to-restart histogram."""

    async def run(self, stopped: kopf.DaemonStopped) -> None:
        wake = self.wakeups.register(self.key)
        failures = 0
        try:
            while not stopped:
                wake.clear()
                try:
                    wake_at = await self.reconcile()
                    failures = 0
                except _Gone:
                    return  # the run is gone; Kopf stops us too
                except _Retry:
                    failures += 1
                    if failures < 5:
                        continue  # lost a write race: decide again on the fresh body now
                    wake_at = time.monotonic() + 0.5
                except Exception as exc:
                    if kube.status_of(exc) == 404:
                        return  # the run is gone; Kopf stops us too
                    failures += 1
                    delay = min(30.0, 0.25 * 2**failures)
                    self.logger.warning("reconcile failed (retry in %.1f s): %s", delay, exc)
                    wake_at = time.monotonic() + delay
                timeout = RESYNC_S if wake_at is None else max(0.0, wake_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        finally:
            self.wakeups.forget(self.key, wake)

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
            return None, "", (run_state.INVALID_SPEC, f"spec.{where}: {first['msg']}")
        root, error = self.store_root(spec.store.uri)
        if error is not None:
            return spec, root, (run_state.STORE_NOT_ALLOWED, error)
        problem = validate_template(raw_spec.get("template") or {})
        if problem is not None:
            return spec, root, (run_state.INVALID_TEMPLATE, problem)
        if self.rejected is not None and self.rejected[0] == generation:
            return spec, root, (run_state.INVALID_TEMPLATE, self.rejected[1])
        return spec, root, None

    def attempt_pods(self, uid: str) -> list[AttemptPod]:
        """The run's pods from the index, plus those we created that it has not shown yet."""
        found = attempts.own_pods(self.pod_index.get(self.key, []), uid)
        seen = {(p.attempt, p.rank) for p in found}
        now = time.monotonic()
        for (attempt, rank), (when, resume) in list(self.created.items()):
            if (attempt, rank) in seen or now - when > CREATED_GRACE_S:
                del self.created[(attempt, rank)]
                continue
            num_nodes = self.num_nodes
            found.append(
                AttemptPod(
                    name=names.attempt_pod_name(self.name, attempt, rank, num_nodes),
                    namespace=self.namespace,
                    run=self.name,
                    attempt=attempt,
                    owner_uid=uid,
                    resumed_from=resume.target,
                    resume_candidates=resume.candidates,
                    rank=rank,
                )
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
        self.num_nodes = spec.num_nodes if spec is not None else self.num_nodes
        checkpoints: list[CheckpointInfo] = list(self.checkpoint_index.get(self.key, []))
        now = datetime.now(UTC)
        seen = time.monotonic()
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
        # Claimed before the first await: the finalizers see the chosen target as protected
        # from now on, not only once the status write has been watched back.
        self.claims[self.key] = frozenset(
            a.resumed_from.name
            for a in step.status.attempts
            if a.phase in LIVE_ATTEMPT_PHASES and a.resumed_from is not None
        )
        for attempt in metrics.transition(status, step.status).failed:
            self.failed_seen.setdefault(attempt, seen)
        metrics.set_run_gauges(self.namespace, self.name, step.status)
        await self.tear_down(step.delete)
        if step.create is None or spec is None:
            await self.write(body, status, step)
        else:
            # The write and the creation go out together: pods are named by attempt and rank,
            # and next_step adopts workers whose recording write was lost (see attempts.py).
            created, wrote = await asyncio.gather(
                self.create_workers(body, step, spec, root),
                self.write(body, status, step),
                return_exceptions=True,
            )
            for outcome in (wrote, created):
                if isinstance(outcome, BaseException):
                    raise outcome
            if isinstance(created, float):
                return created
            failed_at = self.failed_seen.pop(step.create - 1, None)
            if failed_at is not None:
                metrics.RESTART_SECONDS.observe(time.monotonic() - failed_at)
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
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        wanted = {key: desired.get(key) for key in STATUS_FIELDS}
        try:
            response = await kube.patch_status(
                names.TRAINING_RUNS, self.namespace, self.name, wanted, resource_version=version
            )
        except Exception as exc:
            if kube.status_of(exc) == 409:
                # Our view is stale: read the current object and decide again at once.
                fresh = await kube.get(names.TRAINING_RUNS, self.namespace, self.name)
                self.written = (self.live_version(), fresh or body)
                raise _Retry from exc
            raise
        if response is None:
            raise _Gone
        self.written = (self.live_version(), response)
        if not status.phase:
            metrics.RESOURCES_SEEN.labels("TrainingRun").inc()
        metrics.count_transition(metrics.transition(status, step.status))
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

    async def tear_down(self, pods: tuple[str, ...]) -> None:
        """Delete workers of ended attempts, once each until the index shows them going."""
        now = time.monotonic()
        self.deleting = {n: t for n, t in self.deleting.items() if now - t < CREATED_GRACE_S}
        todo = [pod for pod in pods if pod not in self.deleting]
        if todo:
            await asyncio.gather(*(kube.delete_pod(self.namespace, pod) for pod in todo))
            self.deleting.update(dict.fromkeys(todo, now))
            self.logger.info("tore down %s", ", ".join(todo))

    async def create_workers(
        self, body: Mapping[str, Any], step: Step, spec: TrainingRunSpec, root: str
    ) -> float | None:
        """Create the step's workers (and a gang's Service); existing ones are fine."""
        assert step.create is not None
        uid = str((body.get("metadata") or {}).get("uid", ""))
        calls = [self.create_worker(body, step, spec, root, rank) for rank in step.ranks]
        if spec.num_nodes > 1:
            service = build_service(run=self.name, namespace=self.namespace, run_uid=uid)
            calls.append(kube.create_service(self.namespace, service))
        outcomes = await asyncio.gather(*calls)
        retry = [o for o in outcomes if isinstance(o, float)]
        return min(retry) if retry else None

    async def create_worker(
        self, body: Mapping[str, Any], step: Step, spec: TrainingRunSpec, root: str, rank: int
    ) -> float | None:
        """Create one worker; a conflict means it exists, which is fine unless another run's."""
        assert step.create is not None
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        pod = build_pod(
            run=self.name,
            namespace=self.namespace,
            run_uid=uid,
            template=(body.get("spec") or {}).get("template") or {},
            attempt=step.create,
            store_root=root,
            resume=step.resume,
            rank=rank,
            num_nodes=spec.num_nodes,
            master_port=spec.master_port,
        )
        try:
            await kube.create_pod(self.namespace, pod)
        except Exception as exc:
            code = kube.status_of(exc)
            if code == 409:
                everyone = list(self.pod_index.get(self.key, []))
                ours = {(p.attempt, p.rank) for p in attempts.own_pods(everyone, uid)}
                if (step.create, rank) not in ours and any(
                    (p.attempt, p.rank) == (step.create, rank) for p in everyone
                ):
                    self.logger.warning(
                        "pod %s exists but belongs to another run; waiting for it to go",
                        pod["metadata"]["name"],
                    )
                    return time.monotonic() + 2.0
            elif code in (400, 422):
                message = kube.api_message(exc)
                self.logger.warning("the API refused attempt pod: %s", message)
                self.rejected = (meta.get("generation"), f"the API refused the pod: {message}")
                return time.monotonic()
            else:
                raise
        self.created[(step.create, rank)] = (time.monotonic(), step.resume)
        return None


class _Retry(Exception):
    """The status write lost a race; reconcile again with the fresh body."""


class _Gone(Exception):
    """The run was deleted while we decided."""


@kopf.daemon(*TRAINING_RUNS, id="attempts", cancellation_timeout=5.0, when=managed)  # type: ignore[arg-type]  # see indexes
async def run_attempts(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    attempt_pods: AttemptPods,
    checkpoints_by_run: CheckpointsByRun,
    logger: Logger,
    **_: Any,
) -> None:
    """Drive the run's attempts until it is deleted (Kopf stops daemons on deletion)."""
    state = runtime(memo)
    controller = RunController(
        body,
        memo.config,
        state.run_wakeups,
        attempt_pods,
        checkpoints_by_run,
        state.resume_claims,
        logger,
    )
    await controller.run(stopped)
