"""The operator process on the real API server; owner-reference GC by the controller-manager."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "ckpt.dev", "v1alpha1"


def _run_body() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "trainingrun.yaml").read_text())
    return body


def test_operator_sets_initial_conditions(
    k8s: Any, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    api = client.CustomObjectsApi(k8s)
    start_operator(namespace, allowed_roots=("file:///tmp/",))
    run = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", _run_body()
    )
    ckpt = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Checkpoint",
        "metadata": {"name": "mlp-demo-step-100-a0"},
        "spec": {"run": "mlp-demo", "step": 100, "attempt": 0, "path": "step-0000000100.attempt-0"},
    }
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "checkpoints", ckpt)

    def status_of(plural: str, name: str) -> dict[str, Any]:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        status: dict[str, Any] = obj.get("status") or {}
        return status if status.get("conditions") else {}

    run_status = wait_for(
        lambda: status_of("trainingruns", "mlp-demo"), 15, "TrainingRun conditions"
    )
    assert run_status["observedGeneration"] == run["metadata"]["generation"]
    assert run_status["conditions"][0]["observedGeneration"] == run["metadata"]["generation"]
    ckpt_status = wait_for(
        lambda: status_of("checkpoints", ckpt["metadata"]["name"]), 15, "Checkpoint conditions"
    )
    assert ckpt_status["phase"]
    assert {c["type"] for c in ckpt_status["conditions"]}


def test_deleting_a_run_garbage_collects_owned_objects(k8s: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(k8s)
    core = client.CoreV1Api(k8s)
    run = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", _run_body()
    )
    owner = client.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}",
        kind="TrainingRun",
        name=run["metadata"]["name"],
        uid=run["metadata"]["uid"],
        controller=True,
        block_owner_deletion=True,
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="owned", owner_references=[owner]), data={"a": "b"}
        ),
    )
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "mlp-demo")

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 60, "the owned ConfigMap to be garbage-collected")


def test_kwok_runs_pods_on_its_fake_node(k8s: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(
            node_name="kwok-node-0",
            containers=[client.V1Container(name="c", image="busybox")],
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("p", namespace).status.phase == "Running",
        30,
        "kwok to mark the pod Running",
    )
