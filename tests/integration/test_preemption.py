"""A trainer preempted through its pod's deletion saves in its grace period, and the operator
counts the attempt as a preemption (the default rule for exit code 75), not as a crash."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.runner import LocalRunner
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_a_trainer_that_saved_on_sigterm_is_counted_as_preempted(
    k8s: Any,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    pytest.importorskip("torch")
    root = tmp_path / "allowed"
    start_operator(namespace, allowed_roots=(f"file://{root}",))
    c = Cluster(k8s, namespace)
    trainer = {
        "name": "trainer",
        "image": "local",
        "command": ["python", "-m", "tests.sdk.sigterm_trainer"],
    }
    # No restart budget: were the attempt counted as a crash, the run would fail.
    body = run_body("pre", f"file://{root}/pre", max_restarts=0, containers=[trainer])
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
    logs = tmp_path / "pods"
    with LocalRunner(kubeconfig, namespace, REPO, logs):
        c.create_run(body)
        pod = c.wait_pod("pre", 0).metadata.name
        log = logs / f"{pod}.log"
        wait_for(lambda: log.exists() and "step 5" in log.read_text(), 120, "attempt 0 to train")
        c.core.delete_namespaced_pod(pod, namespace)  # as a drain or a preemption would
        status = c.wait_status("pre", "preemptions", 1, timeout=90)
        assert status["restarts"] == 0
        first = status["attempts"][0]
        assert first.get("exitCode") == 75, first
        # The checkpoint it saved is the next attempt's resume point.
        ready = wait_for(lambda: c.status("pre").get("latestCheckpoint"), 60, "a Ready checkpoint")
        assert ready["attempt"] == 0
        c.wait_pod("pre", 1, timeout=60)
