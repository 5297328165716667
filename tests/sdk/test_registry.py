"""The Kubernetes side of the SDK, against fake API objects: never a cluster."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api.names import API_VERSION, LABEL_ATTEMPT, LABEL_RUN, LABEL_STEP
from ckpt_operator.sdk.registry import CheckpointRecord, KubeRegistry
from ckpt_operator.storage.layout import CheckpointName

RECORD = CheckpointRecord("r", CheckpointName(200, 2, "tar"), {"loss": 1})


class FakeCustom:
    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            if method in self.fail:
                raise ApiException(status=self.fail[method], reason="Nope")
            if method == "get_namespaced_custom_object":
                return {"metadata": {"uid": "uid-1"}}
            return {"items": []}

        return call


def test_register_builds_the_checkpoint_object() -> None:
    api = FakeCustom()
    KubeRegistry("ns", api, None).register(RECORD)
    method, args, kwargs = api.calls[-1]
    assert method == "create_namespaced_custom_object"
    assert args[:4] == ("ckpt.dev", "v1alpha1", "ns", "checkpoints")
    body = args[4]
    assert body["metadata"]["name"] == "r-step-200-a2"
    assert body["metadata"]["labels"] == {LABEL_RUN: "r", LABEL_ATTEMPT: "2", LABEL_STEP: "200"}
    owner = body["metadata"]["ownerReferences"][0]
    assert (owner["apiVersion"], owner["kind"], owner["name"], owner["uid"]) == (
        API_VERSION,
        "TrainingRun",
        "r",
        "uid-1",
    )
    assert body["spec"] == {
        "run": "r",
        "step": 200,
        "attempt": 2,
        "path": "step-0000000200.attempt-2.tar",
        "format": "tar",
        "kind": "full",
        "metrics": {"loss": 1.0},
    }
    assert "_request_timeout" in kwargs


def test_conflict_is_fine_and_forbidden_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    KubeRegistry("ns", FakeCustom({"create_namespaced_custom_object": 409}), None).register(RECORD)
    assert not caplog.records
    api = FakeCustom({"create_namespaced_custom_object": 403, "get_namespaced_custom_object": 403})
    registry = KubeRegistry("ns", api, None)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            registry.register(RECORD)
    creates = [c for c in api.calls if c[0] == "create_namespaced_custom_object"]
    assert len(creates) == 3 and "ownerReferences" not in creates[0][1][4]["metadata"]
    assert len([r for r in caplog.records if "registering" in r.message]) == 1
    assert len([r for r in caplog.records if "owner reference" in r.message]) == 1


def test_request_verification_annotates_and_never_touches_status() -> None:
    api = FakeCustom()
    KubeRegistry("ns", api, None).request_verification("r-step-1-a0", "bad checksum in x")
    method, args, kwargs = api.calls[-1]
    assert method == "patch_namespaced_custom_object" and args[4] == "r-step-1-a0"
    stamp = args[5]["metadata"]["annotations"]["verify.ckpt.dev/requested-at"]
    assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, as the operator reads
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert not [c for c in api.calls if c[0].endswith("_status")]
    for status in (403, 404):
        KubeRegistry("ns", FakeCustom({method: status}), None).request_verification("x", "y")


def test_annotate_pod_reports_failure() -> None:
    core = FakeCustom()
    assert KubeRegistry("ns", None, core).annotate_pod("p", {"ckpt.dev/loaded-step": "5"})
    assert core.calls[-1][1][:3] == (
        "p",
        "ns",
        {"metadata": {"annotations": {"ckpt.dev/loaded-step": "5"}}},
    )
    assert not KubeRegistry("ns", None, FakeCustom({"patch_namespaced_pod": 403})).annotate_pod(
        "p", {}
    )


def test_connect_without_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert KubeRegistry.connect("ns") is None


def test_checkpoint_body_carries_world_size_and_shards() -> None:
    from ckpt_operator.kube.objects import checkpoint_body

    name = CheckpointName(10, 1, "dir")
    spec = checkpoint_body("r", name, world_size=4, shards=4)["spec"]
    assert (spec["worldSize"], spec["shards"]) == (4, 4)
    assert "worldSize" not in checkpoint_body("r", name)["spec"]  # a single process's
    api = FakeCustom()
    KubeRegistry("ns", api, None).register(CheckpointRecord("r", name, {}, 4, 4))
    registered = api.calls[-1][1][4]["spec"]
    assert (registered["worldSize"], registered["shards"]) == (4, 4)
