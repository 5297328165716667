"""Pytest fixtures: one real control plane per session, a fresh namespace per test.

Enable with ``pytest_plugins = ["ckpt_operator.testing.pytest_plugin"]``. The first session on a
machine builds the Kubernetes binaries (minutes); later sessions reuse the cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.api import crdgen
from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.jobset import NAME as JOBSET_CONTROLLER
from ckpt_operator.testing.jobset import JobSetController
from ckpt_operator.testing.operator_process import OperatorProcess


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before any test runs, outside every per-test timeout."""
    fixtures = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "control_plane" in fixtures:
        ensure_binaries()
    if "jobset" in fixtures:
        ensure_binaries([JOBSET_CONTROLLER])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller-manager (GC) + kwok, with our CRDs installed."""
    plane = ControlPlane(
        workdir=tmp_path_factory.mktemp("controlplane"),
        controller_manager=True,
        kwok=True,
        crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS],
    )
    with plane:
        yield plane


@pytest.fixture(scope="session")
def jobset(control_plane: ControlPlane) -> Iterator[JobSetController]:
    """The JobSet controller (and its CRD) against the session's control plane."""
    assert control_plane.workdir is not None
    with JobSetController(control_plane.kubeconfig, control_plane.workdir / "jobset") as ctrl:
        yield ctrl


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s(kubeconfig: Path) -> Iterator[Any]:
    """A sync ``kubernetes.client.ApiClient`` with admin rights."""
    with api_client(kubeconfig) as api:
        yield api


def _fresh_namespace(k8s: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(k8s)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(k8s: Any) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    yield from _fresh_namespace(k8s)


@pytest.fixture
def other_namespace(k8s: Any) -> Iterator[str]:
    """A second fresh namespace (e.g. one an operator must not see), deleted afterwards."""
    yield from _fresh_namespace(k8s)


@pytest.fixture
def start_operator(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``start_operator(namespace, allowed_roots=[...])`` runs the operator process."""
    started: list[OperatorProcess] = []

    def start(*namespaces: str, allowed_roots: tuple[str, ...] = ()) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            namespaces=namespaces,
            allowed_roots=allowed_roots,
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()
