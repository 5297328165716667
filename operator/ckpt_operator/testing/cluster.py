"""What tests and benchmarks do to a cluster: create runs and checkpoints, play the kubelet.

There is no kubelet in the integration tier: tests drive attempt pods through their lifecycle
by writing pod status as a kubelet would. Checkpoints are registered with the same body the SDK
creates (:func:`ckpt_operator.kube.objects.checkpoint_body`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.storage import layout
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.waiting import wait_for

GROUP, VERSION = names.GROUP, names.VERSION
HOLD = "test.ckpt.dev/hold"
"""A finalizer of the tests' own, to keep an object Terminating."""


def run_body(
    name: str,
    store_uri: str,
    *,
    max_restarts: int = 5,
    initial_s: float = 0,
    max_s: float = 0,
    rules: list[dict[str, Any]] | None = None,
    max_without_progress: int | None = None,
    containers: list[dict[str, Any]] | None = None,
    retention: dict[str, Any] | None = None,
    consumers: dict[str, Any] | None = None,
    secret: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A TrainingRun restarting at once (no backoff) whose template the tests can recognise."""
    policy: dict[str, Any] = {
        "maxRestarts": max_restarts,
        "backoff": {"initialSeconds": initial_s, "maxSeconds": max_s},
        "rules": rules or [],
    }
    if max_without_progress is not None:
        policy["maxAttemptsWithoutProgress"] = max_without_progress
    store: dict[str, Any] = {"uri": store_uri}
    if secret:
        store["secretRef"] = {"name": secret}
    body_spec: dict[str, Any] = {
        "store": store,
        "template": {
            "metadata": {"labels": {"team": "ml"}, "annotations": {"note": "kept"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "containers": containers
                or [
                    {
                        "name": "trainer",
                        "image": "trainer:latest",
                        "env": [{"name": names.ENV_ATTEMPT, "value": "overridden"}],
                    }
                ],
            },
        },
        "restartPolicy": policy,
    }
    if retention:
        body_spec["retention"] = retention
    if consumers:
        body_spec["consumers"] = consumers
    body_spec.update(spec)
    return {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": body_spec,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _container(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "image": "trainer:latest",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": state,
    }


def _pod_name(run: str, attempt: int, rank: int | None) -> str:
    """A single-node run's pod, or worker ``rank`` of a gang."""
    return names.attempt_pod_name(run, attempt, rank or 0, 1 if rank is None else 2)


def env_of(pod: Any) -> dict[str, str]:
    """The first container's literal env values (downward-API entries as ``fieldRef:path``)."""
    env = {}
    for var in pod.spec.containers[0].env or []:
        if var.value_from is not None:
            env[var.name] = f"fieldRef:{var.value_from.field_ref.field_path}"
        else:
            env[var.name] = var.value or ""
    return env


def candidate_steps(env: dict[str, str]) -> list[int]:
    """The steps named by ``CKPT_RESUME_CANDIDATES``, in its order."""
    steps = []
    for uri in json.loads(env[names.ENV_RESUME_CANDIDATES]):
        parsed = layout.parse_committed(uri)
        assert parsed is not None, uri
        steps.append(parsed.step)
    return steps


class Cluster:
    """The API calls tests make, bound to one namespace (synchronous ``kubernetes`` client)."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            body: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    # --- runs ---------------------------------------------------------------------------------

    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        created: Any = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, names.TRAINING_RUNS, body
        )
        return dict(created)

    def run(self, name: str) -> dict[str, Any] | None:
        return self._get(names.TRAINING_RUNS, name)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = (self.run(name) or {}).get("status") or {}
        return status

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def wait_status(self, name: str, field: str, value: Any, timeout: float = 20) -> dict[str, Any]:
        """The run's status once ``status[field] == value``."""
        found: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal found
            found = self.status(name)
            return bool(found.get(field) == value)

        wait_for(reached, timeout, f"run {name} status.{field} == {value!r}")
        return found

    def wait_run_phase(self, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_status(name, "phase", phase, timeout)

    def events(self, name: str) -> list[Any]:
        """Events about the object called ``name``."""
        found = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        )
        return list(found.items)

    def event_reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events(name)]

    def events_with_reason(self, reason: str) -> list[Any]:
        found = self.core.list_namespaced_event(self.ns)
        return [e for e in found.items if e.reason == reason]

    # --- pods (the tests play the kubelet) ----------------------------------------------------

    def pod(self, name: str) -> Any | None:
        try:
            return self.core.read_namespaced_pod(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def wait_pod(self, run: str, attempt: int, timeout: float = 20, rank: int | None = None) -> Any:
        name = _pod_name(run, attempt, rank)
        return wait_for(lambda: self.pod(name), timeout, f"pod {name}")

    def attempt_pods(self, run: str) -> list[str]:
        pods: Any = self.core.list_namespaced_pod(
            self.ns, label_selector=f"{names.LABEL_RUN}={run}"
        )
        return sorted(str(p.metadata.name) for p in pods.items)

    def _pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, self.ns, {"status": status})

    def run_pod(self, run: str, attempt: int, rank: int | None = None) -> None:
        now = _now()
        self._pod_status(
            _pod_name(run, attempt, rank),
            {
                "phase": "Running",
                "startTime": now,
                "containerStatuses": [_container("trainer", {"running": {"startedAt": now}})],
            },
        )

    def fail_pod(
        self,
        run: str,
        attempt: int,
        exit_code: int = 1,
        reason: str = "Error",
        pod_reason: str | None = None,
        disruption: str | None = None,
        rank: int | None = None,
    ) -> None:
        """Mark the attempt's pod (a gang's worker ``rank``) Failed as a kubelet would."""
        now = _now()
        status: dict[str, Any] = {
            "phase": "Failed",
            "containerStatuses": [
                _container(
                    "trainer",
                    {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now}},
                )
            ],
        }
        if pod_reason:
            status["reason"] = pod_reason
            status["message"] = f"pod {pod_reason.lower()}"
        if disruption:
            status["conditions"] = [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": disruption,
                    "lastTransitionTime": now,
                }
            ]
        self._pod_status(_pod_name(run, attempt, rank), status)

    def succeed_pod(self, run: str, attempt: int, rank: int | None = None) -> None:
        now = _now()
        self._pod_status(
            _pod_name(run, attempt, rank),
            {
                "phase": "Succeeded",
                "containerStatuses": [
                    _container(
                        "trainer",
                        {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}},
                    )
                ],
            },
        )

    def hold_pod(self, name: str) -> None:
        """Keep a pod Terminating once deleted (as a slow kubelet would) until released."""
        self.core.patch_namespaced_pod(name, self.ns, {"metadata": {"finalizers": [HOLD]}})

    def release_pod(self, name: str) -> None:
        self.core.patch_namespaced_pod(name, self.ns, {"metadata": {"finalizers": None}})

    def live_attempts(self, run: str) -> set[int]:
        """Attempts that have a pod not yet Succeeded or Failed (Terminating ones included)."""
        pods: Any = self.core.list_namespaced_pod(
            self.ns, label_selector=f"{names.LABEL_RUN}={run}"
        )
        return {
            int(p.metadata.labels[names.LABEL_ATTEMPT])
            for p in pods.items
            if (p.status.phase or "Pending") not in ("Succeeded", "Failed")
        }

    def consumer(self, name: str, run: str, loaded: int | None = None) -> None:
        """A consumer pod (no nodeName: it stays Pending and nothing runs it)."""
        annotations = {names.ANNOTATION_LOADED_STEP: str(loaded)} if loaded is not None else {}
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name, labels={names.LABEL_CONSUMER_OF: run}, annotations=annotations
            ),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        self.core.create_namespaced_pod(self.ns, pod)

    def report(self, pod: str, step: int) -> None:
        patch = {"metadata": {"annotations": {names.ANNOTATION_LOADED_STEP: str(step)}}}
        self.core.patch_namespaced_pod(pod, self.ns, patch)

    # --- checkpoints --------------------------------------------------------------------------

    def register(
        self,
        run: str | dict[str, Any],
        step: int,
        attempt: int = 0,
        fmt: names.Format = "dir",
        kind: names.Kind = "full",
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Create the Checkpoint object the SDK would create (owned by the run when given its
        body); an existing one (the operator's store scan was first) is fine."""
        name = layout.CheckpointName(step, attempt, fmt, kind)
        if isinstance(run, dict):
            run_name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        else:
            run_name, uid = run, None
        body = checkpoint_body(run_name, name, metrics=metrics, owner_uid=uid)
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, names.CHECKPOINTS, body
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        return name.object_name(run_name)

    def add_checkpoint(
        self, run: str, store: Path, step: int, attempt: int, *, files: bool = True
    ) -> str:
        """Write a committed checkpoint (unless ``files`` is False) and register it."""
        if files:
            write_checkpoint(store, run, step, attempt)
        return self.register(run, step, attempt)

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        return self._get(names.CHECKPOINTS, name)

    def checkpoint_phase(self, name: str) -> str:
        obj = self.checkpoint(name)
        return str(((obj or {}).get("status") or {}).get("phase") or "")

    def wait_checkpoint(self, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
        wait_for(
            lambda: self.checkpoint_phase(name) == phase, timeout, f"checkpoint {name} {phase}"
        )
        body = self.checkpoint(name)
        assert body is not None
        return body

    def checkpoint_names(self) -> set[str]:
        found: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, names.CHECKPOINTS
        )
        return {c["metadata"]["name"] for c in found["items"]}

    def set_checkpoint_phase(self, name: str, phase: str) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, names.CHECKPOINTS, name, {"status": {"phase": phase}}
        )

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            names.CHECKPOINTS,
            name,
            {"metadata": {"annotations": annotations}},
        )

    def delete(self, name: str, plural: str = names.CHECKPOINTS) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def hold_and_delete_checkpoint(self, name: str) -> None:
        """Delete it behind a test finalizer, so it stays Terminating."""
        self._set_finalizers(name, [*self._finalizers(name), HOLD])
        self.delete(name)

    def release_checkpoint(self, name: str) -> None:
        self._set_finalizers(name, [f for f in self._finalizers(name) if f != HOLD])

    def _finalizers(self, name: str) -> list[str]:
        obj = self.checkpoint(name) or {}
        return list((obj.get("metadata") or {}).get("finalizers") or [])

    def _set_finalizers(self, name: str, finalizers: list[str]) -> None:
        patch = {"metadata": {"finalizers": finalizers}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, names.CHECKPOINTS, name, patch
        )
