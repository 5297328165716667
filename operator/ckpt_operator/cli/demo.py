"""``make demo``: the whole product on a local control plane, no Docker, then everything stops.

Starts etcd + kube-apiserver + the garbage collector, installs the CRDs, runs the operator as a
process and a local runner that executes trainer pods as processes, ``kubectl apply -f
examples/``, waits until every run has finished, and prints ``kubectl get tr,ckpt,pods``. The
example's first attempt dies on purpose; the second resumes from its newest checkpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ckpt_operator.api import crdgen, names
from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.runner import LocalRunner

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
DEMO_ROOT = Path("/tmp/ckpt-operator-demo")
NAMESPACE = "default"
FINISHED = ("Succeeded", "Failed")

console = Console()


def _runs(kubeconfig: Path) -> list[dict[str, Any]]:
    from kubernetes import client

    with api_client(kubeconfig) as api:
        listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
            names.GROUP, names.VERSION, NAMESPACE, names.TRAINING_RUNS
        )
    runs: list[dict[str, Any]] = listed["items"]
    return runs


def _settled(kubeconfig: Path) -> bool:
    """Every run finished and every checkpoint verified (Ready or Invalid)."""
    from kubernetes import client

    if not all((r.get("status") or {}).get("phase") in FINISHED for r in _runs(kubeconfig)):
        return False
    with api_client(kubeconfig) as api:
        listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
            names.GROUP, names.VERSION, NAMESPACE, names.CHECKPOINTS
        )
    return all(
        (c.get("status") or {}).get("phase") in ("Ready", "Invalid") for c in listed["items"]
    )


def _summary(run: dict[str, Any]) -> str:
    status = run.get("status") or {}
    lines = [f"{run['metadata']['name']}: {status.get('phase')}"]
    for attempt in status.get("attempts") or []:
        resumed = (attempt.get("resumedFrom") or {}).get("step")
        origin = f"resumed from step {resumed}" if resumed is not None else "started from scratch"
        lines.append(
            f"  attempt {attempt['attempt']}: {attempt.get('phase')}, {origin}, "
            f"exit code {attempt.get('exitCode')}"
        )
    return "\n".join(lines)


def main(timeout: float = 300.0) -> int:
    kubectl = str(ensure_binaries(["kubectl"])["kubectl"])
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    try:
        return _demo(kubectl, timeout)
    finally:
        shutil.rmtree(DEMO_ROOT, ignore_errors=True)  # the demo's checkpoints go with it


def _demo(kubectl: str, timeout: float) -> int:
    with tempfile.TemporaryDirectory(prefix="ckpt-demo-") as tmp:
        console.rule("etcd + kube-apiserver + controller-manager on loopback")
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
                allowed_roots=[f"file://{DEMO_ROOT}/"],
            )
            runner = LocalRunner(plane.kubeconfig, NAMESPACE, REPO, Path(tmp) / "pods")
            with operator, runner:
                console.rule("kubectl apply -f examples/")
                cmd = [kubectl, f"--kubeconfig={plane.kubeconfig}", f"--namespace={NAMESPACE}"]
                subprocess.run([*cmd, "apply", "-f", str(EXAMPLES)], check=True)
                deadline = time.monotonic() + timeout
                while not _settled(plane.kubeconfig):
                    if time.monotonic() > deadline:
                        console.print("[red]the runs did not finish in time[/red]")
                        console.print(operator.log_text()[-4000:])
                        return 1
                    time.sleep(1)
                console.rule("kubectl get tr,ckpt,pods")
                subprocess.run([*cmd, "get", "tr,ckpt,pods"], check=True)
                console.rule("attempts")
                for run in _runs(plane.kubeconfig):
                    console.print(_summary(run))
        console.rule("stopped the runner, the operator and the control plane")
    return 0
