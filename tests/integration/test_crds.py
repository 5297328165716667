"""The generated CRDs on a real API server: valid objects pass, invalid ones name the field."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.testing.binaries import ensure_binaries

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "ckpt.dev", "v1alpha1"


def _example_run() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "trainingrun.yaml").read_text())
    return doc


def _checkpoint(name: str = "c", **spec: Any) -> dict[str, Any]:
    body = {"run": "mlp-demo", "step": 100, "attempt": 0, "path": "step-0000000100.attempt-0"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Checkpoint",
        "metadata": {"name": name},
        "spec": {**body, **spec},
    }


def _create(k8s: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    plural = "trainingruns" if body["kind"] == "TrainingRun" else "checkpoints"
    result: dict[str, Any] = client.CustomObjectsApi(k8s).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return result


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return doc


_DELETE = object()

INVALID_RUNS = [
    ("spec.template", _DELETE, "spec.template"),
    ("spec.workload", {}, "spec.workload"),
    ("spec.template.spec.containers", [], "spec.template.spec.containers"),
    ("spec.store", _DELETE, "spec.store"),
    ("spec.store.uri", "http://example.com/x", "spec.store.uri"),
    ("spec.store.uri", "relative/path", "spec.store.uri"),
    ("spec.store.uri", "file:///data/../etc", "spec.store.uri"),
    ("spec.restartPolicy.maxRestarts", -1, "spec.restartPolicy.maxRestarts"),
    ("spec.restartPolicy.maxRestarts", "three", "spec.restartPolicy.maxRestarts"),
    ("spec.restartPolicy.backoff.initialSeconds", -5, "spec.restartPolicy.backoff.initialSeconds"),
    ("spec.restartPolicy.backoff.maxSeconds", 0.5, "spec.restartPolicy.backoff"),
    ("spec.restartPolicy.rules.0.action", "Explode", "spec.restartPolicy.rules[0].action"),
    (
        "spec.restartPolicy.rules.0.onExitCodes",
        {"operator": "In", "values": [1]},
        "spec.restartPolicy.rules[0]",
    ),
    (
        "spec.restartPolicy.maxAttemptsWithoutProgress",
        0,
        "spec.restartPolicy.maxAttemptsWithoutProgress",
    ),
    ("spec.retention.keepLast", 0, "spec.retention.keepLast"),
    ("spec.retention.keepEvery", -100, "spec.retention.keepEvery"),
    ("spec.consumers.reportTimeoutSeconds", 0, "spec.consumers.reportTimeoutSeconds"),
    ("spec.verify", "sometimes", "spec.verify"),
    ("metadata.name", "r" * 64, "metadata.name"),
]

INVALID_CHECKPOINTS = [
    ({"step": -1}, "spec.step"),
    ({"step": "ten"}, "spec.step"),
    ({"attempt": -2}, "spec.attempt"),
    ({"path": "/etc/passwd"}, "spec.path"),
    ({"path": "../../etc"}, "spec.path"),
    ({"path": "runs/../../etc"}, "spec.path"),
    ({"path": "s3://other-bucket/x"}, "spec.path"),
    ({"path": ""}, "spec.path"),
    ({"format": "zip"}, "spec.format"),
    ({"kind": "partial"}, "spec.kind"),
    ({"run": None}, "spec.run"),
]


def test_valid_examples_are_accepted(k8s: Any, namespace: str) -> None:
    run = _create(k8s, namespace, _example_run())
    assert run["spec"]["store"]["uri"].startswith("file:///")
    ckpt = _create(k8s, namespace, _checkpoint(format="tar", path="step-0000000100.attempt-0.tar"))
    assert ckpt["spec"]["kind"] == "full"  # defaulted by the schema


def test_defaults_are_applied_by_the_api_server(k8s: Any, namespace: str) -> None:
    doc = _example_run()
    doc["spec"] = {"store": doc["spec"]["store"], "template": doc["spec"]["template"]}
    created = _create(k8s, namespace, doc)
    assert created["spec"]["verify"] == "full"


@pytest.mark.parametrize(
    ("field", "value", "named"),
    INVALID_RUNS,
    ids=[c[0] + "=" + repr(c[1])[:20] for c in INVALID_RUNS],
)
def test_invalid_trainingrun_is_rejected_naming_the_field(
    k8s: Any, namespace: str, field: str, value: Any, named: str
) -> None:
    with pytest.raises(ApiException) as caught:
        _create(k8s, namespace, _set(_example_run(), field, value))
    assert caught.value.status == 422, caught.value.body
    assert named in caught.value.body, caught.value.body


@pytest.mark.parametrize(
    ("spec", "named"), INVALID_CHECKPOINTS, ids=[repr(c[0])[:30] for c in INVALID_CHECKPOINTS]
)
def test_invalid_checkpoint_is_rejected_naming_the_field(
    k8s: Any, namespace: str, spec: dict[str, Any], named: str
) -> None:
    body = _checkpoint(**spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(ApiException) as caught:
        _create(k8s, namespace, body)
    assert caught.value.status == 422, caught.value.body
    assert named in caught.value.body, caught.value.body


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", 200), ("path", "step-0000000200.attempt-0"), ("run", "other"), ("attempt", 3)],
)
def test_checkpoint_identity_is_immutable(k8s: Any, namespace: str, field: str, value: Any) -> None:
    _create(k8s, namespace, _checkpoint(name="immutable"))
    api = client.CustomObjectsApi(k8s)
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "checkpoints", "immutable", {"spec": {field: value}}
        )
    assert caught.value.status == 422, caught.value.body
    assert f"spec.{field}" in caught.value.body and "immutable" in caught.value.body


def test_kubectl_short_name_and_category(
    k8s: Any, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """``ckpt`` names only Checkpoints (a category ``ckpt`` would win over the short name and
    ``kubectl delete ckpt --all`` would delete the runs too); ``ckpt-operator`` names both."""
    _create(k8s, namespace, _example_run())
    _create(k8s, namespace, _checkpoint(name="c1"))
    kubectl = ensure_binaries(["kubectl"])["kubectl"]

    config = ["--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]

    def names(*args: str) -> set[str]:
        proc = subprocess.run(
            [str(kubectl), *args, "-n", namespace, "-o", "name", *config],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return set(proc.stdout.split())

    run = "trainingrun.ckpt.dev/" + _example_run()["metadata"]["name"]
    assert names("get", "ckpt") == {"checkpoint.ckpt.dev/c1"}
    assert names("get", "tr") == {run}
    assert names("get", "ckpt-operator") == {run, "checkpoint.ckpt.dev/c1"}
    assert names("delete", "ckpt", "--all") == {"checkpoint.ckpt.dev/c1"}
    assert names("get", "ckpt-operator") == {run}
