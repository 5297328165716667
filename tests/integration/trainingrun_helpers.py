"""Helpers for the TrainingRun integration tests: runs, pods driven by hand, checkpoints.

There is no kubelet: the tests play its part by writing pod status. Checkpoints are written as
real committed directories (files + manifest) in a store under /tmp, so the operator's own
verification finds them valid, and registered as Checkpoint objects like the SDK does.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.storage import layout, manifest
from ckpt_operator.testing.waiting import wait_for

GROUP, VERSION = names.GROUP, names.VERSION
T = TypeVar("T")


def run_body(
    name: str,
    store: str,
    *,
    max_restarts: int = 5,
    initial_s: float = 0,
    max_s: float = 0,
    rules: list[dict[str, Any]] | None = None,
    max_without_progress: int | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "maxRestarts": max_restarts,
        "backoff": {"initialSeconds": initial_s, "maxSeconds": max_s},
        "rules": rules or [],
    }
    if max_without_progress is not None:
        policy["maxAttemptsWithoutProgress"] = max_without_progress
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "store": {"uri": store},
            "template": {
                "metadata": {"labels": {"team": "ml"}, "annotations": {"note": "kept"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": containers
                    or [
                        {
                            "name": "trainer",
                            "image": "trainer:latest",
                            "env": [{"name": "CKPT_ATTEMPT", "value": "overridden"}],
                        }
                    ],
                },
            },
            "restartPolicy": policy,
        },
    }


class Cluster:
    """The API calls the tests make, bound to one namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    # --- runs ---------------------------------------------------------------------------------

    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, "trainingruns", body
        )
        return created

    def run(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, "trainingruns", name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.run(name).get("status") or {}
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

    def wait_phase(self, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_status(name, "phase", phase, timeout)

    def events(self, name: str) -> list[Any]:
        found = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        )
        return list(found.items)

    def event_reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events(name)]

    # --- pods ---------------------------------------------------------------------------------

    def pod(self, name: str) -> Any | None:
        try:
            return self.core.read_namespaced_pod(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def wait_pod(self, run: str, attempt: int, timeout: float = 20) -> Any:
        name = names.attempt_pod_name(run, attempt)
        return wait_for(lambda: self.pod(name), timeout, f"pod {name}")

    def attempt_pods(self, run: str) -> list[str]:
        pods = self.core.list_namespaced_pod(self.ns, label_selector=f"{names.LABEL_RUN}={run}")
        return sorted(p.metadata.name for p in pods.items)

    def _pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, self.ns, {"status": status})

    def run_pod(self, run: str, attempt: int) -> None:
        now = _now()
        self._pod_status(
            names.attempt_pod_name(run, attempt),
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
    ) -> None:
        """Mark the attempt's pod Failed as a kubelet would."""
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
        self._pod_status(names.attempt_pod_name(run, attempt), status)

    def succeed_pod(self, run: str, attempt: int) -> None:
        now = _now()
        self._pod_status(
            names.attempt_pod_name(run, attempt),
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

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, "checkpoints", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def add_checkpoint(
        self, run: str, store: Path, step: int, attempt: int, *, files: bool = True
    ) -> str:
        """Write a committed checkpoint (unless ``files`` is False) and register it; Ready."""
        path = layout.CheckpointName(step, attempt, "dir").path
        if files:
            write_committed(store, run, step, attempt)
        name = names.checkpoint_object_name(run, step, attempt)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Checkpoint",
            "metadata": {
                "name": name,
                "labels": {
                    names.LABEL_RUN: run,
                    names.LABEL_ATTEMPT: str(attempt),
                    names.LABEL_STEP: str(step),
                },
            },
            "spec": {"run": run, "step": step, "attempt": attempt, "path": path},
        }
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, "checkpoints", body
            )
        except ApiException as exc:
            if exc.status != 409:  # the operator's store scan may have registered it first
                raise
        return name

    def checkpoint_phase(self, name: str) -> str:
        obj = self.checkpoint(name)
        return str(((obj or {}).get("status") or {}).get("phase") or "")

    def wait_checkpoint(self, name: str, phase: str, timeout: float = 20) -> None:
        wait_for(
            lambda: self.checkpoint_phase(name) == phase, timeout, f"checkpoint {name} {phase}"
        )

    def set_checkpoint_phase(self, name: str, phase: str) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, "checkpoints", name, {"status": {"phase": phase}}
        )

    def hold_and_delete_checkpoint(self, name: str) -> None:
        """Delete it behind a test finalizer, so it stays Terminating."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            "checkpoints",
            name,
            {"metadata": {"finalizers": [*self._finalizers(name), HOLD]}},
        )
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, "checkpoints", name)

    def release_checkpoint(self, name: str) -> None:
        kept = [f for f in self._finalizers(name) if f != HOLD]
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, "checkpoints", name, {"metadata": {"finalizers": kept}}
        )

    def _finalizers(self, name: str) -> list[str]:
        obj = self.checkpoint(name) or {}
        return list((obj.get("metadata") or {}).get("finalizers") or [])


HOLD = "test.ckpt.dev/hold"


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


def write_committed(store: Path, run: str, step: int, attempt: int) -> Path:
    """A committed directory checkpoint: one data file and its manifest."""
    final = store / layout.CheckpointName(step, attempt, "dir").path
    final.mkdir(parents=True, exist_ok=True)
    data = os.urandom(64)
    (final / "state.bin").write_bytes(data)
    hasher = manifest.new_hasher()
    hasher.update(data)
    entry = manifest.FileEntry(path="state.bin", size=len(data), checksum=hasher.hexdigest())
    built = manifest.Manifest.build(
        run=run, step=step, attempt=attempt, kind="full", format="dir", files=[entry]
    )
    (final / layout.MANIFEST_NAME).write_bytes(built.to_bytes())
    return final


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
    for uri in json.loads(env["CKPT_RESUME_CANDIDATES"]):
        parsed = layout.parse_committed(uri)
        assert parsed is not None, uri
        steps.append(parsed.step)
    return steps
