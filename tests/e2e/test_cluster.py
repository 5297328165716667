"""End to end on kind: build the image, install the chart, watch a TrainingRun get handled.

Needs a Docker engine (kind runs its node in a container and ``docker build`` makes the image);
the module is skipped, saying so, where ``docker info`` gets no answer. ``kind`` and ``helm`` are
built from their Go modules on first use (cached). The cluster is always deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from ckpt_operator.testing.binaries import ensure_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ckpt-operator"
EXAMPLE = REPO / "examples" / "trainingrun.yaml"
RELEASE = "ckpt-operator"
OPERATOR_NAMESPACE = "ckpt-system"
# examples/trainingrun.yaml keeps its store under this root.
ALLOWED_ROOT = "file:///tmp/ckpt-operator-demo/"


def _docker_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` CLI on PATH"
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`docker info` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return None


_PROBLEM = _docker_problem()

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        _PROBLEM is not None,
        reason=f"e2e tier needs a Docker engine for kind and docker build; {_PROBLEM}",
    ),
    # Building kind/helm and the image, pulling the node image: much longer than the default.
    pytest.mark.timeout(2400),
]


def _run(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command; fail the test with its output when it fails or overruns."""
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{' '.join(args)} timed out after {timeout:.0f} s") from error
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc.stdout


@dataclass
class Kind:
    name: str
    kubeconfig: Path
    image: str
    helm: Path
    helm_env: dict[str, str]


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    """A kind cluster with the operator image loaded into it; deleted (with the image) after."""
    tools = ensure_binaries(["kind", "helm"])
    kind = str(tools["kind"])
    work = tmp_path_factory.mktemp("kind")
    suffix = uuid.uuid4().hex[:8]
    name = f"ckpt-e2e-{suffix}"
    image = f"ckpt-operator:e2e-{suffix}"
    kubeconfig = work / "kubeconfig"
    helm_env = {
        "HELM_CACHE_HOME": str(work / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(work / "helm" / "config"),
        "HELM_DATA_HOME": str(work / "helm" / "data"),
    }
    try:
        _run(["docker", "build", "--tag", image, str(REPO)], timeout=1200)
        _run(
            [
                kind,
                "create",
                "cluster",
                "--name",
                name,
                "--kubeconfig",
                str(kubeconfig),
                "--wait",
                "180s",
            ],
            timeout=600,
        )
        _run([kind, "load", "docker-image", image, "--name", name], timeout=300)
        yield Kind(name, kubeconfig, image, tools["helm"], helm_env)
    finally:
        subprocess.run(
            [kind, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)],
            capture_output=True,
            timeout=300,
            check=False,
        )
        subprocess.run(
            ["docker", "image", "rm", "--force", image],
            capture_output=True,
            timeout=120,
            check=False,
        )


def _operator_logs(api: Any) -> str:
    from kubernetes import client

    core = client.CoreV1Api(api)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    chunks = []
    pods: list[Any] = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector).items
    for pod in pods:
        try:
            text = core.read_namespaced_pod_log(pod.metadata.name, OPERATOR_NAMESPACE)
        except Exception as error:
            text = f"(no log: {error})"
        chunks.append(f"--- {pod.metadata.name} ({pod.status.phase})\n{text[-4000:]}")
    return "\n".join(chunks) or "(no operator pods)"


def _wait(what: str, check: Any, timeout: float, on_timeout: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{on_timeout()}")


def test_chart_installs_and_the_operator_handles_a_training_run(kind_cluster: Kind) -> None:
    from kubernetes import client

    from ckpt_operator.testing.controlplane import api_client

    repository, tag = kind_cluster.image.rsplit(":", 1)
    _run(
        [
            str(kind_cluster.helm),
            "install",
            RELEASE,
            str(CHART),
            "--kubeconfig",
            str(kind_cluster.kubeconfig),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            f"allowedRoots={{{ALLOWED_ROOT}}}",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            # Loaded into the node by kind; there is no registry to pull it from.
            "--set",
            "image.pullPolicy=Never",
        ],
        timeout=120,
        env=kind_cluster.helm_env,
    )
    with api_client(kind_cluster.kubeconfig) as api:
        apps = client.AppsV1Api(api)

        def available() -> bool:
            # The chart's full name is the release name when that holds the chart's name.
            deployment: Any = apps.read_namespaced_deployment(RELEASE, OPERATOR_NAMESPACE)
            return any(
                condition.type == "Available" and condition.status == "True"
                for condition in (deployment.status and deployment.status.conditions) or []
            )

        _wait("operator Deployment Available", available, 300, lambda: _operator_logs(api))

        run = yaml.safe_load(EXAMPLE.read_text())
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            "ckpt.dev", "v1alpha1", "default", "trainingruns", run
        )

        def phase() -> str | None:
            obj = cast(
                dict[str, Any],
                custom.get_namespaced_custom_object(
                    "ckpt.dev", "v1alpha1", "default", "trainingruns", run["metadata"]["name"]
                ),
            )
            value = obj.get("status", {}).get("phase")
            return str(value) if value else None

        got = _wait("TrainingRun status.phase", phase, 120, lambda: _operator_logs(api))
        assert got
