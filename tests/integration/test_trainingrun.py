"""The TrainingRun controller against a real API server, pods driven through their phases here.

Newest resume (resume target = newest Ready checkpoint of any attempt): ``test_resumes_from_
newest_checkpoint_of_any_attempt``. Verified resume (never resume from anything not verified, or
Terminating): ``test_invalid_and_terminating_checkpoints_are_skipped``. Crash convergence (killed at
any instant: converges, no duplicate attempt): the two ``test_operator_killed_*`` tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.testing.cluster import Cluster, candidate_steps, env_of, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ALLOWED = ("file:///tmp/",)
Start = Callable[..., OperatorProcess]


@pytest.fixture
def kube(k8s: Any, namespace: str) -> Cluster:
    return Cluster(k8s, namespace)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def operator(namespace: str, start_operator: Start) -> Iterator[OperatorProcess]:
    process = start_operator(namespace, allowed_roots=ALLOWED)
    yield process
    assert "Traceback" not in process.log_text(), process.log_text()[-4000:]


def uri(store: Path) -> str:
    return f"file://{store}"


def test_resumes_from_newest_checkpoint_of_any_attempt(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Attempt 0 saves 100 and 200 and fails; attempt 1 saves nothing and fails; attempt 2
    must resume from 200 (written by attempt 0, not the previous attempt) with [200, 100]."""
    run = kube.create_run(run_body("r", uri(store)))
    pod0 = kube.wait_pod("r", 0)
    env0 = env_of(pod0)
    assert env0["CKPT_RESUME_FROM"] == ""
    assert env0["CKPT_RESUME_STEP"] == ""
    assert env0["CKPT_RESUME_CANDIDATES"] == "[]"
    assert env0["CKPT_RUN"] == "r"
    assert env0["CKPT_NAMESPACE"] == kube.ns
    assert env0["CKPT_ATTEMPT"] == "0"
    assert env0["CKPT_STORE"] == uri(store)
    assert env0["POD_NAME"] == "fieldRef:metadata.name"
    assert env0["POD_NAMESPACE"] == "fieldRef:metadata.namespace"
    assert pod0.spec.restart_policy == "Never"
    assert pod0.metadata.labels == {
        "team": "ml",
        names.LABEL_RUN: "r",
        names.LABEL_ATTEMPT: "0",
        names.LABEL_NODE_RANK: "0",
    }
    assert pod0.metadata.annotations["note"] == "kept"
    owner = pod0.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("TrainingRun", "r", run["metadata"]["uid"])
    assert owner.controller and owner.block_owner_deletion

    kube.run_pod("r", 0)
    kube.wait_run_phase("r", "Running")
    for step in (100, 200):
        kube.wait_checkpoint(kube.add_checkpoint("r", store, step, 0), "Ready")
    wait_for(
        lambda: (kube.status("r").get("latestCheckpoint") or {}).get("step") == 200, 10, "latest"
    )
    kube.fail_pod("r", 0, exit_code=1)
    env1 = env_of(kube.wait_pod("r", 1))
    assert candidate_steps(env1) == [200, 100]

    kube.fail_pod("r", 1, exit_code=137, reason="OOMKilled")
    env2 = env_of(kube.wait_pod("r", 2))
    target = f"{uri(store)}/{layout.CheckpointName(200, 0, 'dir').path}"
    assert env2["CKPT_RESUME_FROM"] == target
    assert env2["CKPT_RESUME_STEP"] == "200"
    assert env2["CKPT_ATTEMPT"] == "2"
    assert candidate_steps(env2) == [200, 100]

    status = kube.wait_status("r", "attempt", 2, 10)
    assert status["restarts"] == 2
    assert status["latestCheckpoint"]["step"] == 200
    assert [a["attempt"] for a in status["attempts"]] == [0, 1, 2]
    first, second, third = status["attempts"]
    assert (first["phase"], first["exitCode"], first["action"]) == ("Failed", 1, "Retry")
    assert (second["exitCode"], second["reason"]) == (137, "OOMKilled")
    assert "resumedFrom" not in first
    assert second["resumedFrom"]["step"] == 200
    assert third["resumedFrom"] == {
        "name": names.checkpoint_object_name("r", 200, 0),
        "step": 200,
        "attempt": 0,
        "uri": target,
    }
    assert third["pod"] == "r-attempt-2"
    generation = kube.run("r")["metadata"]["generation"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Progressing"]["status"] == "True"
    assert conds["Failed"]["status"] == "False"
    assert all(conds[t]["observedGeneration"] == generation for t in ("Ready", "Failed"))
    restarted = wait_for(
        lambda: len(r := [e for e in kube.events("r") if e.reason == "Restarted"]) == 2 and r,
        10,
        "two Restarted events",
    )
    assert any("step 200" in e.message and "attempt 2" in e.message for e in restarted)
    assert kube.attempt_pods("r") == ["r-attempt-0", "r-attempt-1", "r-attempt-2"]


def test_invalid_and_terminating_checkpoints_are_skipped(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Newest (400) never verified, 300 turned Invalid, 200 Terminating: resume from 100."""
    kube.create_run(run_body("r", uri(store)))
    kube.wait_pod("r", 0)
    ckpts = {s: kube.add_checkpoint("r", store, s, 0) for s in (100, 200, 300)}
    for name in ckpts.values():
        kube.wait_checkpoint(name, "Ready")
    kube.set_checkpoint_phase(ckpts[300], "Invalid")
    kube.hold_and_delete_checkpoint(ckpts[200])
    unverified = kube.add_checkpoint("r", store, 400, 0, files=False)  # Pending, then Invalid
    wait_for(lambda: kube.checkpoint_phase(unverified) != "Ready", 5, "an unverified checkpoint")
    wait_for(
        lambda: (kube.status("r").get("latestCheckpoint") or {}).get("step") == 100,
        10,
        "latestCheckpoint to fall back to step 100",
    )
    try:
        kube.fail_pod("r", 0)
        env = env_of(kube.wait_pod("r", 1))
        assert env["CKPT_RESUME_STEP"] == "100"
        assert candidate_steps(env) == [100]
        status = kube.wait_status("r", "attempt", 1, 10)
        resumed = status["attempts"][1]["resumedFrom"]
        assert resumed["name"] == ckpts[100]
    finally:
        kube.release_checkpoint(ckpts[200])


def test_budget_exhausted_fails_the_run(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    kube.create_run(run_body("r", uri(store), max_restarts=1))
    kube.wait_pod("r", 0)
    kube.fail_pod("r", 0)
    kube.wait_pod("r", 1)
    kube.fail_pod("r", 1)
    status = kube.wait_run_phase("r", "Failed")
    assert status["restarts"] == 1
    failed = kube.condition("r", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartBudgetExhausted")
    assert kube.condition("r", "Ready")["status"] == "False"
    assert kube.condition("r", "Progressing")["status"] == "False"
    wait_for(lambda: "RestartBudgetExhausted" in kube.event_reasons("r"), 10, "the event")
    time.sleep(1)
    assert kube.attempt_pods("r") == ["r-attempt-0", "r-attempt-1"]


def test_fail_run_rule_fails_at_once(kube: Cluster, store: Path, operator: OperatorProcess) -> None:
    rules = [{"action": "FailRun", "onExitCodes": {"operator": "In", "values": [2, 3]}}]
    kube.create_run(run_body("r", uri(store), rules=rules))
    kube.wait_pod("r", 0)
    kube.fail_pod("r", 0, exit_code=3)
    status = kube.wait_run_phase("r", "Failed")
    assert status["restarts"] == 0
    assert status["attempts"][0]["action"] == "FailRun"
    failed = kube.condition("r", "Failed")
    assert failed["reason"] == "FailedByRule"
    assert "exit code 3" in failed["message"]
    time.sleep(1)
    assert kube.attempt_pods("r") == ["r-attempt-0"]


def test_ignored_failures_do_not_spend_the_budget(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Preemption and eviction restart with maxRestarts 0; an ordinary failure then fails."""
    rules = [{"action": "Ignore", "onReasons": ["Preempted", "Evicted", "DisruptionTarget"]}]
    kube.create_run(run_body("r", uri(store), max_restarts=0, rules=rules))
    kube.wait_pod("r", 0)
    kube.fail_pod("r", 0, exit_code=0, reason="Error", pod_reason="Preempted")
    kube.wait_pod("r", 1)
    kube.fail_pod("r", 1, exit_code=137, disruption="EvictionByEvictionAPI")
    kube.wait_pod("r", 2)
    status = kube.wait_status("r", "attempt", 2, 10)
    assert status["restarts"] == 0
    assert [a.get("action") for a in status["attempts"][:2]] == ["Ignore", "Ignore"]
    assert status["attempts"][0]["reason"] == "Preempted"
    kube.fail_pod("r", 2, exit_code=1)
    kube.wait_run_phase("r", "Failed")
    assert kube.condition("r", "Failed")["reason"] == "RestartBudgetExhausted"


def test_ignored_failures_have_a_budget_of_their_own(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """A run preempted again and again does not loop forever: maxPreemptions ends it."""
    rules = [{"action": "Ignore", "onReasons": ["Preempted"]}]
    body = run_body("r", uri(store), rules=rules)
    body["spec"]["restartPolicy"]["maxPreemptions"] = 2
    kube.create_run(body)
    for attempt in range(3):
        kube.wait_pod("r", attempt)
        kube.fail_pod("r", attempt, exit_code=143, pod_reason="Preempted")
    status = kube.wait_run_phase("r", "Failed")
    assert (status["preemptions"], status["restarts"], status["attempt"]) == (2, 0, 2)
    failed = kube.condition("r", "Failed")
    assert failed["reason"] == "PreemptionBudgetExhausted" and "maxPreemptions" in failed["message"]
    assert "PreemptionBudgetExhausted" in kube.event_reasons("r")


def test_progress_rule_fails_a_stuck_run(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Attempt 0 makes progress; attempts 1 and 2 make none: maxAttemptsWithoutProgress 2."""
    kube.create_run(run_body("r", uri(store), max_restarts=10, max_without_progress=2))
    kube.wait_pod("r", 0)
    kube.wait_checkpoint(kube.add_checkpoint("r", store, 100, 0), "Ready")
    kube.fail_pod("r", 0)
    kube.wait_pod("r", 1)
    status = kube.wait_status("r", "attempt", 1, 10)
    assert status["attemptsWithoutProgress"] == 0
    kube.fail_pod("r", 1)
    kube.wait_pod("r", 2)
    kube.fail_pod("r", 2)
    status = kube.wait_run_phase("r", "Failed")
    assert status["attemptsWithoutProgress"] == 2
    assert status["restarts"] == 2
    failed = kube.condition("r", "Failed")
    assert failed["reason"] == "NoProgress"
    assert "2 consecutive attempts" in failed["message"]


def test_backoff_delays_the_next_attempt(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    kube.create_run(run_body("r", uri(store), initial_s=1.5, max_s=10))
    kube.wait_pod("r", 0)
    kube.fail_pod("r", 0)
    failed_at = time.monotonic()
    status = kube.wait_run_phase("r", "BackingOff", timeout=5)
    assert status["nextAttemptAfter"]
    assert kube.condition("r", "Progressing")["reason"] == "BackingOff"
    kube.wait_pod("r", 1, timeout=10)
    assert time.monotonic() - failed_at >= 1.3
    status = kube.wait_run_phase("r", "Pending")
    assert "nextAttemptAfter" not in status


def test_operator_killed_between_failure_and_next_attempt(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Crash convergence: the failure happens while the operator is down; after its restart there is
    exactly one next attempt and the counters count the failure once."""
    kube.create_run(run_body("r", uri(store), initial_s=1, max_s=1))
    kube.wait_pod("r", 0)
    kube.fail_pod("r", 0)
    kube.wait_run_phase("r", "BackingOff", timeout=5)  # decided and persisted, pod not yet created
    operator.kill()
    time.sleep(1.2)  # the backoff deadline passes while nobody is watching
    operator.start()
    kube.wait_pod("r", 1)
    operator.kill()
    kube.fail_pod("r", 1)
    operator.start()
    kube.wait_pod("r", 2)
    status = kube.wait_status("r", "phase", "Pending", 10)
    time.sleep(1.5)  # a duplicate would show up by now
    assert kube.attempt_pods("r") == ["r-attempt-0", "r-attempt-1", "r-attempt-2"]
    status = kube.status("r")
    assert status["attempt"] == 2
    assert status["restarts"] == 2
    assert [a["attempt"] for a in status["attempts"]] == [0, 1, 2]


def test_operator_killed_at_random_instants_converges(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """Crash convergence under fire: SIGKILL at random moments around failures; in the end one pod
    per attempt, consecutive attempt numbers, every failure counted exactly once."""
    rng = random.Random(4)
    kube.create_run(run_body("r", uri(store), max_restarts=20))
    kube.wait_pod("r", 0)
    failures = 4
    for attempt in range(failures):
        kube.wait_pod("r", attempt, timeout=30)
        kube.fail_pod("r", attempt)
        time.sleep(rng.uniform(0, 0.15))
        operator.kill()
        operator.start()
    kube.wait_pod("r", failures, timeout=30)
    status = kube.wait_status("r", "attempt", failures, 10)
    time.sleep(1)
    assert kube.attempt_pods("r") == [f"r-attempt-{n}" for n in range(failures + 1)]
    status = kube.status("r")
    assert status["restarts"] == failures
    assert [a["attempt"] for a in status["attempts"]] == list(range(failures + 1))
    assert [a["phase"] for a in status["attempts"]] == ["Failed"] * failures + ["Pending"]


def test_success_and_deletion(kube: Cluster, store: Path, operator: OperatorProcess) -> None:
    kube.create_run(run_body("r", uri(store)))
    kube.wait_pod("r", 0)
    kube.run_pod("r", 0)
    status = kube.wait_run_phase("r", "Running")
    assert status["attempts"][0]["phase"] == "Running"
    kube.succeed_pod("r", 0)
    status = kube.wait_run_phase("r", "Succeeded")
    assert status["attempts"][0]["exitCode"] == 0
    assert kube.condition("r", "Ready")["status"] == "True"
    assert kube.condition("r", "Progressing")["status"] == "False"
    assert kube.condition("r", "Failed")["status"] == "False"
    wait_for(lambda: "Succeeded" in kube.event_reasons("r"), 10, "a Succeeded event")
    kube.custom.delete_namespaced_custom_object(
        "ckpt.dev", "v1alpha1", kube.ns, "trainingruns", "r"
    )

    wait_for(
        lambda: kube.run("r") is None and not kube.attempt_pods("r"),
        60,
        "the run and its pods to be deleted",
    )


def test_store_outside_allowed_roots_is_a_condition_not_a_crash(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    kube.create_run(run_body("r", "file:///etc/ckpt"))
    kube.wait_run_phase("r", "Failed")
    failed = kube.condition("r", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "StoreNotAllowed")
    assert "not inside any allowed root" in failed["message"]
    assert kube.condition("r", "Ready")["reason"] == "StoreNotAllowed"
    wait_for(lambda: "StoreNotAllowed" in kube.event_reasons("r"), 10, "a StoreNotAllowed event")
    assert kube.attempt_pods("r") == []
    # Fixing the spec recovers the run.
    kube.custom.patch_namespaced_custom_object(
        "ckpt.dev",
        "v1alpha1",
        kube.ns,
        "trainingruns",
        "r",
        {"spec": {"store": {"uri": uri(store)}}},
    )
    kube.wait_pod("r", 0)
    wait_for(lambda: kube.condition("r", "Failed")["status"] == "False", 10, "Failed=False")


def test_template_the_api_refuses_is_invalid_template(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    no_image = [{"name": "trainer"}]
    kube.create_run(run_body("a", uri(store), containers=no_image))
    bad_resources = [{"name": "trainer", "image": "x", "resources": {"limits": {"cpu": "lots"}}}]
    kube.create_run(run_body("b", uri(store), containers=bad_resources))
    for name in ("a", "b"):
        kube.wait_run_phase(name, "Failed")
        failed = kube.condition(name, "Failed")
        assert (failed["status"], failed["reason"]) == ("True", "InvalidTemplate"), failed
    assert "image" in kube.condition("a", "Failed")["message"]
    assert kube.attempt_pods("a") == kube.attempt_pods("b") == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("template", "spec", "containers"), []),
        (("restartPolicy", "maxRestarts"), -1),
        (("restartPolicy", "backoff", "initialSeconds"), -1),
        (("restartPolicy", "maxAttemptsWithoutProgress"), 0),
    ],
)
def test_bad_input_is_refused_at_admission(
    kube: Cluster, store: Path, path: tuple[str, ...], value: Any
) -> None:
    body = run_body("r", uri(store))
    node = body["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ApiException) as caught:
        kube.create_run(body)
    assert caught.value.status == 422
    assert path[-1] in caught.value.body


def test_a_pod_stuck_pending_fails_the_attempt_after_startup_timeout(
    kube: Cluster, store: Path, operator: OperatorProcess
) -> None:
    """An image that cannot be pulled must not keep the run waiting forever: the attempt fails
    with reason StartupTimeout and the pod's own reason, and the rules decide what follows."""
    kube.create_run(run_body("r", uri(store), startupTimeoutSeconds=2))
    kube.wait_pod("r", 0)
    waiting = {
        "name": "trainer",
        "image": "trainer:latest",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
    }
    kube.core.patch_namespaced_pod_status(
        "r-attempt-0", kube.ns, {"status": {"phase": "Pending", "containerStatuses": [waiting]}}
    )
    kube.wait_pod("r", 1, timeout=30)
    record = kube.status("r")["attempts"][0]
    assert (record["phase"], record["reason"], record["action"]) == (
        "Failed",
        "StartupTimeout",
        "Retry",
    )
    assert "r-attempt-0: ImagePullBackOff: Back-off pulling image" in record["message"]
