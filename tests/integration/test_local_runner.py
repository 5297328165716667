"""LocalRunner stops deleted pods as a kubelet does: SIGTERM, then SIGKILL after the grace.

With save_on_sigterm a trainer uses that grace period to save, and its pod reports exit code
``names.EXIT_PREEMPTED``; a process that ignores SIGTERM is killed once the grace is over.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ckpt_operator.api import names
from ckpt_operator.storage.layout import parse_committed
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.cluster import HOLD
from ckpt_operator.testing.runner import LocalRunner
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('step 5', flush=True); time.sleep(600)"
)


def _pod(name: str, command: list[str], grace_s: int) -> client.V1Pod:
    # HOLD keeps the pod readable after the runner removes it, to read how it ended.
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, finalizers=[HOLD]),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=grace_s,
            containers=[client.V1Container(name="main", image="local", command=command)],
        ),
    )


def _stop(core: Any, namespace: str, name: str, logdir: Path) -> tuple[dict[str, Any], float]:
    """Wait until it runs, delete it (its own grace period), return its end and how long."""
    log = logdir / f"{name}.log"
    wait_for(lambda: log.exists() and "step 5" in log.read_text(), 120, f"{name} to train")
    core.delete_namespaced_pod(name, namespace)
    sent = time.monotonic()

    def terminated() -> dict[str, Any] | None:
        pod = core.read_namespaced_pod(name, namespace)
        for status in pod.status.container_statuses or []:
            if status.state.terminated is not None:
                return {"exitCode": status.state.terminated.exit_code, "phase": pod.status.phase}
        return None

    try:
        ended = wait_for(terminated, 60, f"{name} to end")
        return ended, time.monotonic() - sent
    finally:
        core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})


def test_a_deleted_pod_gets_sigterm_and_its_grace_period(
    k8s: Any, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    core = client.CoreV1Api(k8s)
    uri = f"file://{tmp_path}/run"
    logdir = tmp_path / "pods"
    with LocalRunner(kubeconfig, namespace, REPO, logdir):
        trainer = [sys.executable, "-m", "tests.sdk.sigterm_trainer", uri]
        core.create_namespaced_pod(namespace, _pod("trainer", trainer, 60))
        core.create_namespaced_pod(
            namespace, _pod("stubborn", [sys.executable, "-c", IGNORES_SIGTERM], 2)
        )
        ended, took = _stop(core, namespace, "trainer", logdir)
        assert ended == {"exitCode": names.EXIT_PREEMPTED, "phase": "Failed"}
        assert took < 60
        committed = [parse_committed(e) for e in Store.from_uri(uri).list_entries()]
        assert [c.step for c in committed if c is not None]
        # SIGTERM ignored: SIGKILL once its 2 s are over, reported as a kubelet would.
        ended, took = _stop(core, namespace, "stubborn", logdir)
        assert ended == {"exitCode": 137, "phase": "Failed"}
        assert 2 <= took < 30
