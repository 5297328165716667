"""The chart's CRDs through a release's life, on a control plane of their own.

The CRDs are templates (``crds.install``), so ``helm upgrade`` updates them, and they are kept
when the release is uninstalled unless ``crds.keep=false``. The session's control plane holds
our CRDs already, unowned by any release; this module starts a bare one the chart installs into.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import crdgen
from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.controlplane import ControlPlane, api_client, install_crds
from tests.integration.conftest import CRD_DELETION_TIMEOUT_S, Helm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ckpt-operator"
OURS = sorted(d.name for d in crdgen.DEFINITIONS)
NAMESPACE = "ckpt-system"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with no CRDs at all."""
    with ControlPlane(workdir=tmp_path_factory.mktemp("bare-plane")) as started:
        yield started


@pytest.fixture
def api(plane: ControlPlane) -> Iterator[Any]:
    with api_client(plane.kubeconfig) as api_:
        yield api_
        _delete_crds(api_)


def _crd(api: Any, name: str) -> Any | None:
    try:
        return client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _delete_crds(api: Any) -> None:
    for name in OURS:
        if _crd(api, name) is not None:
            client.ApiextensionsV1Api(api).delete_custom_resource_definition(name)
    _wait(
        lambda: all(_crd(api, name) is None for name in OURS),
        "the CRDs to go",
        timeout=CRD_DELETION_TIMEOUT_S,
    )


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def _checkpoint(api: Any, name: str, **extra: Any) -> dict[str, Any]:
    """Create a Checkpoint with strict field validation: unknown fields are refused."""
    body = {
        "apiVersion": "ckpt.dev/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {"name": name},
        "spec": {"run": "r", "step": 1, "attempt": 0, "path": "step-1", **extra},
    }
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "ckpt.dev", "v1alpha1", "default", "checkpoints", body, field_validation="Strict"
    )
    return created


def _chart_with_extra_field(tmp_path: Path) -> Path:
    """A copy of the chart whose Checkpoint CRD gained ``spec.note``: a schema upgrade."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    doc = crdgen.crd(crdgen.CHECKPOINT)
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["note"] = {"type": "string"}
    template = chart / "templates" / "crds" / f"{crdgen.CHECKPOINT.name}.yaml"
    assert template.exists()
    template.write_text(crdgen.chart_template(doc))
    return chart


def test_crds_are_upgraded_with_the_release_and_kept_on_uninstall(
    helm: Helm, plane: ControlPlane, api: Any, tmp_path: Path
) -> None:
    common = ["--namespace", NAMESPACE, "--kubeconfig", str(plane.kubeconfig)]
    roots = ["--set", "allowedRoots={file:///data/checkpoints/}"]
    helm("install", "ckpt", str(CHART), *common, *roots, "--create-namespace")
    for name in OURS:
        crd = _crd(api, name)
        assert crd is not None, f"{name} was not installed"
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    with pytest.raises(ApiException) as refused:
        _checkpoint(api, "before", note="hello")
    assert "unknown field" in refused.value.body and "spec.note" in refused.value.body

    helm("upgrade", "ckpt", str(_chart_with_extra_field(tmp_path)), *common, "--reuse-values")

    def served() -> bool:
        try:
            return _checkpoint(api, "after", note="hello")["spec"]["note"] == "hello"
        except ApiException as error:  # the API server takes a moment to serve a new schema
            assert "spec.note" in error.body, error.body
            return False

    _wait(served, "new field served")

    helm("uninstall", "ckpt", *common, "--wait")
    assert all(_crd(api, name) is not None for name in OURS), "uninstall deleted the CRDs"
    found = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "ckpt.dev", "v1alpha1", "default", "checkpoints", "after"
    )
    assert found["spec"]["note"] == "hello", "the Checkpoints must survive too"

    # Installed again, the release adopts the CRDs it left; with crds.keep=false they go with it.
    helm("install", "ckpt", str(CHART), *common, *roots)
    helm("upgrade", "ckpt", str(CHART), *common, "--reuse-values", "--set", "crds.keep=false")
    assert "helm.sh/resource-policy" not in (_crd(api, OURS[0]).metadata.annotations or {})
    helm("uninstall", "ckpt", *common, "--wait", "--timeout", f"{CRD_DELETION_TIMEOUT_S}s")
    _wait(
        lambda: all(_crd(api, name) is None for name in OURS),
        "CRDs deleted with the release",
        timeout=CRD_DELETION_TIMEOUT_S,
    )


def test_crds_applied_by_hand_are_adopted_as_the_chart_readme_says(
    helm: Helm, plane: ControlPlane, api: Any
) -> None:
    """Releases of charts that shipped the CRDs in ``crds/`` left them unowned."""
    install_crds(plane.kubeconfig, [crdgen.crd(d) for d in crdgen.DEFINITIONS])
    common = ["--namespace", NAMESPACE, "--kubeconfig", str(plane.kubeconfig)]
    args = [*common, "--set", "allowedRoots={file:///data/checkpoints/}", "--create-namespace"]
    refused = helm("install", "adopt", str(CHART), *args, check=False)
    assert refused.returncode != 0
    assert "invalid ownership metadata" in refused.stderr, refused.stderr

    # The commands of the chart's README.
    kubectl = [str(ensure_binaries(["kubectl"])["kubectl"]), "--kubeconfig", str(plane.kubeconfig)]
    for command in (
        ["label", "crd", *OURS, "app.kubernetes.io/managed-by=Helm"],
        ["annotate", "crd", *OURS, "meta.helm.sh/release-name=adopt"],
        ["annotate", "crd", *OURS, f"meta.helm.sh/release-namespace={NAMESPACE}"],
    ):
        subprocess.run([*kubectl, *command], check=True, capture_output=True, timeout=60)
    helm("install", "adopt", str(CHART), *args)
    for name in OURS:
        crd = _crd(api, name)
        assert crd.metadata.labels["app.kubernetes.io/instance"] == "adopt"
    helm("uninstall", "adopt", *common, "--wait")
