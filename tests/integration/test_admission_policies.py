"""The chart's trust boundaries, enforced by the real API server.

Trainers may register Checkpoints but never write their status, and the status-writer policy
refuses every status write but the operator's, a cluster admin's included. A consumer may
move its own pod's report annotations, never another pod's, although the consumer role lets
it patch every pod in its namespace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.controlplane import api_client
from tests.integration.test_chart import (
    RBAC_KINDS,
    ROOTS,
    Helm,
    Manifest,
    _service_account_kubeconfig,
    create,
    delete_quietly,
    dynamic,
    render,
)

pytestmark = pytest.mark.integration

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


@pytest.fixture
def installed(k8s: Any, tmp_path: Path) -> Iterator[Callable[[Manifest, str], None]]:
    """Factory: create a manifest's RBAC and admission policies for real; the cluster-scoped
    ones are deleted afterwards (the session's other tests write status as admin)."""
    dyn = dynamic(k8s, tmp_path)
    created: list[dict[str, Any]] = []

    def install(manifest: Manifest, namespace: str) -> None:
        for obj in manifest:
            if obj["kind"] in RBAC_KINDS + POLICY_KINDS:
                create(dyn, obj, namespace, dry_run=False)
                created.append(obj)

    yield install
    for obj in reversed(created):
        if obj["kind"].startswith("Cluster") or obj["kind"] in POLICY_KINDS:
            delete_quietly(dyn, obj)


@contextlib.contextmanager
def as_service_account(
    k8s: Any, kubeconfig: Path, namespace: str, name: str, tmp_path: Path
) -> Iterator[Any]:
    """An API client authenticated as ``namespace/name`` (created when missing)."""
    core = client.CoreV1Api(k8s)
    with contextlib.suppress(ApiException):
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    path = _service_account_kubeconfig(
        k8s, kubeconfig, namespace, name, tmp_path / f"{namespace}-{name}.kubeconfig"
    )
    with api_client(path) as api:
        yield api


def refused(call: Callable[[], object]) -> int | None:
    """The HTTP status the call was refused with; None when it went through."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return None


def eventually_refused(call: Callable[[], object], timeout: float = 15) -> int:
    """Policies and bindings reach the admission plugin through an informer: retry a while."""
    deadline = time.monotonic() + timeout
    while (status := refused(call)) is None:
        assert time.monotonic() < deadline, "never refused"
        time.sleep(0.2)
    return status


def _release(namespace: str) -> str:
    return f"ckpt-{namespace}"


def test_only_the_operator_writes_checkpoint_status(
    helm: Helm,
    k8s: Any,
    kubeconfig: Path,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    installed: Callable[[Manifest, str], None],
) -> None:
    # Scoped to the watched namespace, so the session's other tests are not held to it.
    values = {
        "allowedRoots": ROOTS,
        "watchNamespaces": [other_namespace],
        "trainerRole": {"bindings": [{"namespace": other_namespace, "serviceAccount": "trainer"}]},
    }
    manifest = render(helm, tmp_path, _release(namespace), namespace, values)
    installed(manifest, namespace)
    admin = Cluster(k8s, other_namespace)
    run = admin.create_run(run_body("r", "file:///data/checkpoints/r"))
    probe, name = admin.register(run, 5), admin.register(run, 10)

    def set_ready(api: Any, checkpoint: str = name) -> Callable[[], object]:
        return lambda: client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            "ckpt.dev",
            "v1alpha1",
            other_namespace,
            names.CHECKPOINTS,
            checkpoint,
            {"status": {"phase": "Ready"}},
        )

    # Once the policy is in force (the probe is refused), a cluster admin is refused...
    assert eventually_refused(set_ready(k8s, probe)) == 403
    assert refused(set_ready(k8s)) == 403
    assert admin.checkpoint_phase(name) != "Ready"
    with as_service_account(k8s, kubeconfig, other_namespace, "trainer", tmp_path) as trainer:
        # ...a trainer (by RBAC already) while it may still register checkpoints...
        assert refused(set_ready(trainer)) == 403
        Cluster(trainer, other_namespace).register(run, 20)
    sa = f"{_release(namespace)}-ckpt-operator"
    with as_service_account(k8s, kubeconfig, namespace, sa, tmp_path) as operator:
        # ...and the operator is not.
        assert refused(set_ready(operator)) is None
    assert admin.checkpoint_phase(name) == "Ready"
    # TrainingRuns' status is the operator's alone too.
    patch = {"status": {"phase": "Succeeded"}}
    assert (
        refused(
            lambda: client.CustomObjectsApi(k8s).patch_namespaced_custom_object_status(
                "ckpt.dev", "v1alpha1", other_namespace, names.TRAINING_RUNS, "r", patch
            )
        )
        == 403
    )
    # Outside the watched namespaces the policy does not hold.
    elsewhere = Cluster(k8s, namespace)
    elsewhere.create_run(run_body("r", "file:///data/checkpoints/r"))
    outside = elsewhere.register("r", 10)
    elsewhere.set_checkpoint_phase(outside, "Ready")


def _consumer_pod(core: Any, namespace: str, name: str, service_account: str) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={names.LABEL_CONSUMER_OF: "r"}),
        spec=client.V1PodSpec(
            service_account_name=service_account,
            containers=[client.V1Container(name="c", image="busybox")],
        ),
    )
    core.create_namespaced_pod(namespace, pod)


def test_a_consumer_reports_only_for_its_own_pod(
    helm: Helm,
    k8s: Any,
    kubeconfig: Path,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    installed: Callable[[Manifest, str], None],
) -> None:
    bindings = [{"namespace": other_namespace, "serviceAccount": sa} for sa in ("a", "b")]
    values = {
        "allowedRoots": ROOTS,
        "watchNamespaces": [other_namespace],
        "consumerRole": {"bindings": bindings},
    }
    manifest = render(helm, tmp_path, _release(namespace), namespace, values)
    installed(manifest, namespace)
    core = client.CoreV1Api(k8s)
    _consumer_pod(core, other_namespace, "pod-a", "a")
    _consumer_pod(core, other_namespace, "pod-b", "b")

    def annotate(api: Any, pod: str, key: str, value: str = "") -> Callable[[], object]:
        """A patch of one annotation; without ``value``, a new one each call."""

        def call() -> object:
            body = {"metadata": {"annotations": {key: value or str(time.monotonic_ns())}}}
            return client.CoreV1Api(api).patch_namespaced_pod(pod, other_namespace, body)

        return call

    def reports(pod: str) -> dict[str, str]:
        found = core.read_namespaced_pod(pod, other_namespace).metadata.annotations or {}
        return {k: v for k, v in found.items() if k.startswith(f"{names.GROUP}/")}

    with as_service_account(k8s, kubeconfig, other_namespace, "a", tmp_path) as a:
        # A may patch pod B (RBAC) but not move B's reports.
        assert eventually_refused(annotate(a, "pod-b", names.ANNOTATION_LOADED_STEP)) == 403
        before = reports("pod-b")
        assert refused(annotate(a, "pod-b", names.ANNOTATION_LOADED_STEP)) == 403
        assert refused(annotate(a, "pod-b", names.ANNOTATION_HEARTBEAT)) == 403
        assert refused(annotate(a, "pod-b", "example.com/other")) is None
        assert reports("pod-b") == before
        # Its own, it may.
        assert refused(annotate(a, "pod-a", names.ANNOTATION_LOADED_STEP, "7")) is None
        assert refused(annotate(a, "pod-a", names.ANNOTATION_HEARTBEAT)) is None
    assert reports("pod-a")[names.ANNOTATION_LOADED_STEP] == "7"
    # Nor may a cluster admin speak for a pod.
    assert refused(annotate(k8s, "pod-b", names.ANNOTATION_LOADED_STEP)) == 403
    sa = f"{_release(namespace)}-ckpt-operator"
    with as_service_account(k8s, kubeconfig, namespace, sa, tmp_path) as operator:
        assert refused(annotate(operator, "pod-b", names.ANNOTATION_LOADED_STEP, "8")) is None
    assert reports("pod-b")[names.ANNOTATION_LOADED_STEP] == "8"


def test_a_trainer_changes_a_checkpoint_only_to_ask_for_verification(
    helm: Helm,
    k8s: Any,
    kubeconfig: Path,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    installed: Callable[[Manifest, str], None],
) -> None:
    values = {
        "allowedRoots": ROOTS,
        "watchNamespaces": [other_namespace],
        "trainerRole": {"bindings": [{"namespace": other_namespace, "serviceAccount": "trainer"}]},
    }
    manifest = render(helm, tmp_path, _release(namespace), namespace, values)
    installed(manifest, namespace)
    admin = Cluster(k8s, other_namespace)
    run = admin.create_run(run_body("r", "file:///data/checkpoints/r"))
    name = admin.register(run, 10)

    def patch(api: Any, body: dict[str, Any]) -> Callable[[], object]:
        return lambda: client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "ckpt.dev", "v1alpha1", other_namespace, names.CHECKPOINTS, name, body
        )

    patch(k8s, {"metadata": {"finalizers": [names.FINALIZER]}})()  # as the operator would

    def annotations(**values: str | None) -> dict[str, Any]:
        return {"metadata": {"annotations": values}}

    force = annotations(**{names.ANNOTATION_FORCE_DELETE: "true"})
    with as_service_account(k8s, kubeconfig, other_namespace, "trainer", tmp_path) as trainer:
        # Once the policy is in force (a new annotation each try: a patch that changes
        # nothing is never refused)...
        assert (
            eventually_refused(
                lambda: patch(trainer, annotations(probe=str(time.monotonic_ns())))()
            )
            == 403
        )
        # ...none of what would unprotect the files goes through...
        for body in (
            force,
            annotations(**{names.ANNOTATION_STORE: "file:///elsewhere/"}),
            {"metadata": {"labels": {"x": "y"}}},
            {"metadata": {"finalizers": None}},
            {"spec": {"metrics": {"loss": 0.0}}},
        ):
            assert refused(patch(trainer, body)) == 403, body
        # ...while asking for a verification, the SDK's one call, does.
        asked = annotations(**{names.ANNOTATION_VERIFY_REQUESTED: "2026-01-01T00:00:00Z"})
        assert refused(patch(trainer, asked)) is None
    # People keep what RBAC gives them.
    assert refused(patch(k8s, force)) is None
    assert refused(patch(k8s, {"metadata": {"finalizers": None}})) is None
