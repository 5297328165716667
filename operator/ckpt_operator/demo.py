"""``make demo``: the whole product on a local control plane, no Docker, then everything stops.

Starts etcd + kube-apiserver + the garbage collector, installs the CRDs, runs the operator as a
process, ``kubectl apply -f examples/``, waits until the operator has handled every run and
prints ``kubectl get tr,ckpt``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ckpt_operator import crdgen, layout
from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.operator_process import OperatorProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_ROOT = "file:///tmp/ckpt-operator-demo/"
NAMESPACE = "default"

console = Console()


def _handled_everything(kubeconfig: Path) -> bool:
    from kubernetes import client

    with api_client(kubeconfig) as api:
        listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
            layout.GROUP, layout.VERSION, NAMESPACE, "trainingruns"
        )
        runs = listed["items"]
    return bool(runs) and all((run.get("status") or {}).get("phase") for run in runs)


def main(timeout: float = 120.0) -> int:
    kubectl = str(ensure_binaries(["kubectl"])["kubectl"])
    with tempfile.TemporaryDirectory(prefix="ckpt-demo-") as tmp:
        console.rule("starting etcd + kube-apiserver + controller-manager on loopback")
        with ControlPlane(
            workdir=Path(tmp) / "cluster",
            controller_manager=True,
            crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS],
        ) as plane:
            console.print(f"API server {plane.server}; CRDs installed")
            operator = OperatorProcess(
                plane.kubeconfig,
                Path(tmp) / "operator.log",
                namespaces=[NAMESPACE],
                allowed_roots=[DEMO_ROOT],
            )
            with operator:
                console.rule("kubectl apply -f examples/")
                env_kubectl = [kubectl, f"--kubeconfig={plane.kubeconfig}", f"-n={NAMESPACE}"]
                subprocess.run([*env_kubectl, "apply", "-f", str(EXAMPLES)], check=True)
                deadline = time.monotonic() + timeout
                while not _handled_everything(plane.kubeconfig):
                    if time.monotonic() > deadline:
                        console.print("[red]the operator did not handle the examples in time[/red]")
                        console.print(operator.log_text()[-4000:])
                        return 1
                    time.sleep(0.5)
                console.rule("kubectl get tr,ckpt")
                subprocess.run([*env_kubectl, "get", "tr,ckpt", "-o", "wide"], check=True)
        console.rule("stopped the operator and the control plane")
    return 0
