"""The mutating admission webhook: every pod of an attached run starts from the newest checkpoint.

A Job, a JobSet or a TrainJob restarts its pods by creating new ones; none of them knows which
checkpoint a new pod should resume from. Pods opt in with the label ``ckpt.dev/run: <run>`` (in
a namespace labelled ``ckpt.dev/webhook: enabled``), and at their creation this handler:

1. finds the run (it must exist, be watched by this operator and use ``spec.workload``) and
   checks the pod against ``spec.workload.selector``;
2. groups the pod into an attempt (:func:`~ckpt_operator.policy.observed.attempt_key`) and
   joins the open attempt of that key or opens the next one with the newest Ready checkpoint
   (:func:`~ckpt_operator.policy.observed.admit`), from the in-memory indexes;
3. writes a new attempt to the run's status *before* answering (guarded by the run's
   ``resourceVersion``, retried on conflict), so the resume target is protected before any
   pod can load it;
4. answers with a patch: the ``CKPT_*`` env in every container, the label
   ``ckpt.dev/attempt`` and the resume annotations.

A reason the user must fix (no such run, a run with a template, a store outside the allowed
roots, a selector mismatch) refuses the pod with a message naming it; the workload's
controller reports it in its events. Being unable to answer (indexes not listed yet, the API
unreachable) is HTTP 503 instead (see :mod:`.webhook_server`): the ``failurePolicy`` decides.

Registered only when the webhook is enabled (:func:`register`): Kopf refuses to start with an
admission handler and no server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.api.models import TrainingRunSpec, TrainingRunStatus
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers.indexes import AttemptPods, CheckpointsByRun
from ckpt_operator.handlers.runtime import Logger
from ckpt_operator.handlers.webhook_server import UNAVAILABLE
from ckpt_operator.kube import client as kube
from ckpt_operator.kube import webhook
from ckpt_operator.kube.trainer import attempt_env
from ckpt_operator.policy.consumers import selector_matches
from ckpt_operator.policy.observed import Admission, admit, attempt_key
from ckpt_operator.storage.store import Store, StoreError
from ckpt_operator.views.workload import AdmittedPod

WRITE_TRIES = 5


class _Refused(kopf.AdmissionError):
    """A reason the user must fix: the pod is refused with this message."""

    def __init__(self, reason: str, message: str, code: int = 400) -> None:
        super().__init__(f"ckpt-operator: {message}", code=code)
        self.reason = reason


class _Unavailable(kopf.AdmissionError):
    """The webhook cannot answer now: HTTP 503, and the API server's failurePolicy decides."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"ckpt-operator: {message}", code=UNAVAILABLE)
        self.reason = reason


async def inject(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    attempt_pods: AttemptPods,
    checkpoints_by_run: CheckpointsByRun,
    logger: Logger,
    **_: Any,
) -> None:
    """Give the pod its attempt and resume point (see the module docstring)."""
    started = time.monotonic()
    config: OperatorConfig = memo.config
    namespace = str(body.metadata.namespace or "")
    pod = AdmittedPod.from_body(body, namespace)
    try:
        admission, root = await _admit(
            pod, config, attempt_pods, checkpoints_by_run, dryrun, logger
        )
    except (_Refused, _Unavailable) as exc:
        metrics.WEBHOOK_ERRORS.labels(exc.reason).inc()
        raise
    except Exception as exc:
        metrics.WEBHOOK_ERRORS.labels("error").inc()
        logger.exception("admission of a pod of run %s failed", pod.run)
        raise _Unavailable("error", f"could not admit the pod: {exc}") from exc
    finally:
        metrics.WEBHOOK_SECONDS.observe(time.monotonic() - started)
    env = attempt_env(pod.run, namespace, admission.attempt, root, admission.resume)
    patch.metadata.labels[names.LABEL_ATTEMPT] = str(admission.attempt)
    for key, value in webhook.resume_annotations(admission.resume).items():
        patch.metadata.annotations[key] = value
    containers = cast(list[dict[str, Any]], list(body.spec.get("containers") or []))
    patch.spec["containers"] = webhook.injected_containers(containers, env)
    if pod.restart_policy != "Never":
        warnings.append(
            f"ckpt-operator: restartPolicy {pod.restart_policy} restarts containers in place "
            "with the resume point they started with; use Never so every restart is a new pod"
        )
    metrics.WEBHOOK_INJECTIONS.labels("new" if admission.opened else "joined").inc()


async def _admit(
    pod: AdmittedPod,
    config: OperatorConfig,
    attempt_pods: AttemptPods,
    checkpoints_by_run: CheckpointsByRun,
    dryrun: bool,
    logger: Logger,
) -> tuple[Admission, str]:
    """The pod's attempt and resume point, and the run's store root."""
    if config.namespaces and pod.namespace not in config.namespaces:
        raise _Refused(
            "namespace", f"this operator does not watch namespace {pod.namespace}", code=403
        )
    key = (pod.namespace, pod.run)
    for _ in range(WRITE_TRIES):
        run = await kube.get(names.TRAINING_RUNS, pod.namespace, pod.run)
        if run is None:
            raise _Refused("no_run", f"no TrainingRun {pod.run} in {pod.namespace}", code=404)
        spec = _spec(run, pod)
        try:
            root = Store.from_uri(spec.store.uri, allowed_roots=config.allowed_roots).root_uri
        except StoreError as exc:
            raise _Refused("store", f"TrainingRun {pod.run}: {exc}", code=403) from exc
        uid = str(run["metadata"].get("uid", ""))
        known = [p for p in attempt_pods.get(key, []) if p.owner_uid != uid]
        assert spec.workload is not None
        group = attempt_key(pod, known, spec.workload.attempt_label)
        status = TrainingRunStatus.model_validate(run.get("status") or {})
        now = datetime.now(UTC)
        admission = admit(status, group, pod, checkpoints_by_run.get(key, []), root, now)
        if admission.status is None or dryrun:
            return admission, root
        version = str(run["metadata"].get("resourceVersion", ""))
        wanted = admission.status.wire()
        fields = {"attempts": wanted.get("attempts"), "attempt": wanted.get("attempt")}
        try:
            written = await kube.patch_status(
                names.TRAINING_RUNS, pod.namespace, pod.run, fields, resource_version=version
            )
        except Exception as exc:
            if kube.status_of(exc) == 409:
                continue  # another pod or the observer wrote first: decide again
            raise
        if written is None:
            raise _Refused("no_run", f"TrainingRun {pod.run} was deleted", code=404)
        logger.info("pod %s opens attempt %d of %s", pod.display_name, admission.attempt, pod.run)
        return admission, root
    raise _Unavailable("conflict", f"the status of {pod.run} kept changing; try again")


def _spec(run: dict[str, Any], pod: AdmittedPod) -> TrainingRunSpec:
    """The run's spec, if the pod may attach to it; refusals name what to fix."""
    try:
        spec = TrainingRunSpec.model_validate(run.get("spec") or {})
    except ValidationError as exc:
        raise _Refused("invalid_run", f"TrainingRun {pod.run} is invalid: {exc}") from exc
    if spec.workload is None:
        raise _Refused(
            "not_attached",
            f"TrainingRun {pod.run} has a template, so the operator creates its pods itself; "
            f"attach with spec.workload, or remove the label {names.LABEL_RUN} from this pod",
        )
    selector = spec.workload.selector.wire() if spec.workload.selector else None
    if selector and not selector_matches(selector, pod.labels):
        raise _Refused(
            "selector",
            f"pod {pod.display_name} does not match spec.workload.selector of TrainingRun "
            f"{pod.run}",
        )
    return spec


def register() -> None:
    """Register :func:`inject` with Kopf (only when the webhook server is configured)."""
    kopf.on.mutate(
        "pods",
        id=names.WEBHOOK_PATH,
        operations=["CREATE"],
        side_effects=True,
        labels={names.LABEL_RUN: kopf.PRESENT, names.LABEL_ATTEMPT: kopf.ABSENT},
    )(inject)  # type: ignore[arg-type]  # index keyword arguments, see handlers/indexes.py
