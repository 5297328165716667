"""Multi-node TrainingRuns on the real API server: gangs start, fail and restart together.

The tests play the kubelet (pod status). A test finalizer on workers stands for a slow
teardown, so "the next gang starts only when the old one is gone" is observable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.api import names
from ckpt_operator.testing.cluster import Cluster, env_of, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ALLOWED = ("file:///tmp/",)
NODES = 3


@pytest.fixture
def kube(k8s: Any, namespace: str) -> Cluster:
    return Cluster(k8s, namespace)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def operator(
    namespace: str, start_operator: Callable[..., OperatorProcess]
) -> Iterator[OperatorProcess]:
    process = start_operator(namespace, allowed_roots=ALLOWED)
    yield process
    assert "Traceback" not in process.log_text(), process.log_text()[-4000:]


def gang_body(name: str, store: Path, **extra: Any) -> dict[str, Any]:
    return run_body(name, f"file://{store}", numNodes=NODES, **extra)


def worker(run: str, attempt: int, rank: int) -> str:
    return names.attempt_pod_name(run, attempt, rank, NODES)


def wait_gang(kube: Cluster, run: str, attempt: int) -> list[Any]:
    return [kube.wait_pod(run, attempt, rank=r) for r in range(NODES)]


def test_a_failed_worker_restarts_the_whole_gang_from_the_newest_checkpoint(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    kube.create_run(gang_body("g", store))
    pods = wait_gang(kube, "g", 0)
    envs = [env_of(p) for p in pods]
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["MASTER_ADDR"] for e in envs} == {f"g-attempt-0-0.g.{kube.ns}.svc"}
    assert {e["PET_NNODES"] for e in envs} == {"3"}
    assert {e["CKPT_RESUME_FROM"] for e in envs} == {""}
    assert [p.spec.hostname for p in pods] == [worker("g", 0, r) for r in range(NODES)]
    assert {p.spec.subdomain for p in pods} == {"g"}
    service = kube.core.read_namespaced_service("g", kube.ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
    for rank in range(NODES):
        kube.run_pod("g", 0, rank=rank)
    kube.wait_run_phase("g", "Running")
    kube.add_checkpoint("g", store, 100, 0)
    newest = kube.add_checkpoint("g", store, 200, 0)
    kube.wait_checkpoint(newest, "Ready")
    for rank in (0, 1):  # a slow teardown: these stay Terminating until released
        kube.hold_pod(worker("g", 0, rank))
    kube.fail_pod("g", 0, exit_code=137, reason="OOMKilled", rank=2)
    wait_for(
        lambda: all(
            (kube.pod(worker("g", 0, r)) or object()).metadata.deletion_timestamp  # type: ignore[attr-defined]
            for r in (0, 1)
        ),
        20,
        "workers 0 and 1 of attempt 0 to be deleted",
    )
    status = kube.wait_status("g", "phase", "BackingOff")
    record = status["attempts"][0]
    assert (record["phase"], record["exitCode"], record["reason"]) == ("Failed", 137, "OOMKilled")
    assert record["pod"] == worker("g", 0, 2)
    assert [(w["rank"], w["phase"]) for w in record["workers"]] == [
        (0, "Running"),
        (1, "Running"),
        (2, "Failed"),
    ]
    assert kube.condition("g", "Progressing")["reason"] == "TearingDown"
    time.sleep(2)
    assert kube.pod(worker("g", 1, 0)) is None, "a new gang started while the old one ran"
    for rank in (0, 1):
        kube.release_pod(worker("g", 0, rank))
    pods = wait_gang(kube, "g", 1)
    assert {env_of(p)["CKPT_RESUME_FROM"] for p in pods} == {
        f"file://{store}/step-0000000200.attempt-0"
    }
    assert {env_of(p)["MASTER_ADDR"] for p in pods} == {f"g-attempt-1-0.g.{kube.ns}.svc"}
    status = kube.wait_status("g", "attempt", 1)
    assert status["restarts"] == 1 and status["attempts"][1]["resumedFrom"]["step"] == 200
    for rank in range(NODES):
        kube.run_pod("g", 1, rank=rank)
        kube.succeed_pod("g", 1, rank=rank)
    kube.wait_run_phase("g", "Succeeded")


def test_workers_stuck_pending_fail_the_attempt_with_the_reason(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    rules = [{"action": "FailRun", "onReasons": ["StartupTimeout"]}]
    kube.create_run(gang_body("p", store, startupTimeoutSeconds=2, rules=rules))
    wait_gang(kube, "p", 0)
    kube.run_pod("p", 0, rank=0)
    status = kube.wait_run_phase("p", "Failed", timeout=30)
    record = status["attempts"][0]
    assert record["reason"] == "StartupTimeout"
    assert worker("p", 0, 1) in record["message"] and worker("p", 0, 2) in record["message"]
    assert kube.condition("p", "Failed")["reason"] == "FailedByRule"
    wait_for(lambda: not kube.live_attempts("p"), 20, "the half-started gang to be torn down")


def test_operator_killed_at_random_instants_during_gang_failures(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Crash convergence for gangs: SIGKILL while workers fail and are torn down; at every
    observation at most one gang is alive, and in the end the counters match the failures."""
    rng = random.Random(9)
    kube.create_run(gang_body("k", store, max_restarts=20))
    failures = 4
    for attempt in range(failures):
        wait_gang(kube, "k", attempt)
        assert len(kube.live_attempts("k")) <= 1
        victim = rng.randrange(NODES)
        kube.fail_pod("k", attempt, exit_code=1, rank=victim)
        time.sleep(rng.uniform(0, 0.3))
        operator.kill()
        assert len(kube.live_attempts("k")) <= 1
        time.sleep(rng.uniform(0, 0.5))
        operator.start()
    pods = wait_gang(kube, "k", failures)
    assert len(pods) == NODES
    status = kube.wait_status("k", "attempt", failures)
    assert status["restarts"] == failures
    assert [a["attempt"] for a in status["attempts"]] == list(range(failures + 1))
    assert [a["phase"] for a in status["attempts"]] == ["Failed"] * failures + ["Pending"]
    assert kube.live_attempts("k") == {failures}
    names_now = kube.attempt_pods("k")
    assert len(names_now) == len(set(names_now))
