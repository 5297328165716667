"""Attached runs against a real API server: the webhook is served on loopback by the operator
and called by the kube-apiserver; the Job controller of the local controller-manager creates
and replaces the pods (tests play the kubelet by writing pod status).

Newest resume across a workload's own restarts: ``test_job_replacements_resume_from_the_newest_
checkpoint``. Opt-in: ``test_pods_not_opted_in_are_never_modified``. Operator down:
``test_operator_down_*``. JobSet: ``test_jobset_gang_restart_shares_one_resume_point``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.testing.cluster import Cluster, candidate_steps, env_of
from ckpt_operator.testing.controlplane import free_port
from ckpt_operator.testing.jobset import RESTART_ATTEMPT, JobSetController
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ALLOWED = ("file:///tmp/",)
IMAGE = "trainer:latest"
Start = Callable[..., OperatorProcess]


@pytest.fixture
def kube(k8s: Any, namespace: str) -> Cluster:
    """The test's namespace, opted in to the webhook."""
    label = {"metadata": {"labels": {names.LABEL_WEBHOOK: names.WEBHOOK_ENABLED}}}
    client.CoreV1Api(k8s).patch_namespace(namespace, label)
    return Cluster(k8s, namespace)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def start_webhook(
    kubeconfig: Path, k8s: Any, namespace: str, tmp_path: Path
) -> Iterator[Callable[[str], OperatorProcess]]:
    """``start(failure_policy)``: the operator serving the webhook on loopback, registered in
    a MutatingWebhookConfiguration it manages (deleted afterwards)."""
    configuration = f"ckpt-{namespace}"
    started: list[OperatorProcess] = []

    def start(failure_policy: str = "Ignore") -> OperatorProcess:
        args = [
            f"--webhook-port={free_port()}",
            "--webhook-addr=127.0.0.1",
            f"--webhook-configuration={configuration}",
            f"--webhook-failure-policy={failure_policy}",
        ]
        process = OperatorProcess(
            kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            namespaces=[namespace],
            allowed_roots=ALLOWED,
            extra_args=args,
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()
        assert "Traceback" not in process.log_text(), process.log_text()[-4000:]
    with contextlib.suppress(ApiException):
        client.AdmissionregistrationV1Api(k8s).delete_mutating_webhook_configuration(configuration)


def uri(store: Path) -> str:
    return f"file://{store}"


def attached_run(name: str, store: Path, **workload: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"store": {"uri": uri(store)}, "workload": workload},
    }


def pod_template(run: str, store: Path) -> dict[str, Any]:
    """An opted-in trainer: the template's own CKPT_STORE is the fallback without the webhook."""
    return {
        "metadata": {"labels": {names.LABEL_RUN: run}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "trainer",
                    "image": IMAGE,
                    "env": [
                        {"name": names.ENV_STORE, "value": uri(store)},
                        {"name": "KEEP", "value": "1"},
                    ],
                }
            ],
        },
    }


def job_body(name: str, run: str, store: Path, completions: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 4,
            "template": pod_template(run, store),
        },
    }


def wait_webhook(kube: Cluster, timeout: float = 30) -> None:
    """Until the API server calls the webhook: a dry-run pod of no run is refused by it."""
    pod = {
        "metadata": {"name": "probe", "labels": {names.LABEL_RUN: "no-such-run"}},
        "spec": {"containers": [{"name": "c", "image": IMAGE}]},
    }

    def refused() -> bool:
        try:
            kube.core.create_namespaced_pod(kube.ns, pod, dry_run="All")
        except ApiException as exc:
            return "no TrainingRun no-such-run" in str(exc.body)
        return False

    wait_for(refused, timeout, "the webhook to answer the API server")


def job_pods(kube: Cluster, job: str) -> list[Any]:
    pods = kube.core.list_namespaced_pod(kube.ns, label_selector=f"job-name={job}").items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


def new_pod(kube: Cluster, job: str, seen: set[str], count: int = 1) -> list[Any]:
    """Wait until the Job has ``count`` pods not in ``seen``; add them to it."""
    found: list[Any] = []

    def appeared() -> bool:
        nonlocal found
        found = [p for p in job_pods(kube, job) if p.metadata.name not in seen]
        return len(found) >= count

    wait_for(appeared, 60, f"{count} new pod(s) of job {job}")
    seen.update(p.metadata.name for p in found)
    return found


def set_phase(kube: Cluster, pod: str, phase: str, exit_code: int = 1) -> None:
    """Play the kubelet. A failure is dated in the past so the Job controller's backoff
    (10 s, doubling per failure) has already elapsed and the replacement comes at once."""
    now = datetime.now(UTC)
    stamp = (now - timedelta(minutes=30) if phase == "Failed" else now).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    state: dict[str, Any] = {"running": {"startedAt": stamp}}
    if phase == "Failed":
        state = {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": stamp}}
    container = {
        "name": "trainer",
        "image": IMAGE,
        "imageID": "",
        "ready": phase == "Running",
        "restartCount": 0,
        "state": state,
    }
    status = {"phase": phase, "startTime": stamp, "containerStatuses": [container]}
    kube.core.patch_namespaced_pod_status(pod, kube.ns, {"status": status})


def target_uri(store: Path, step: int, attempt: int = 0) -> str:
    return f"{uri(store)}/{layout.CheckpointName(step, attempt, 'dir').path}"


def test_job_replacements_resume_from_the_newest_checkpoint(
    kube: Cluster, store: Path, start_webhook: Callable[[str], OperatorProcess]
) -> None:
    """An Indexed Job's pod fails after checkpoints 100 and 200: the Job controller's
    replacement resumes from 200; that one dies before saving, and the next resumes from 200."""
    start_webhook("Ignore")
    kube.create_run(attached_run("train", store))
    wait_webhook(kube)
    client.BatchV1Api(kube.core.api_client).create_namespaced_job(
        kube.ns, job_body("train", "train", store)
    )
    seen: set[str] = set()
    (first,) = new_pod(kube, "train", seen)
    env = env_of(first)
    assert (env["CKPT_RESUME_FROM"], env["CKPT_ATTEMPT"], env["CKPT_RUN"]) == ("", "0", "train")
    assert env["CKPT_STORE"] == uri(store) and env["KEEP"] == "1"
    assert env["CKPT_NAMESPACE"] == kube.ns and env["POD_NAME"] == "fieldRef:metadata.name"
    assert first.metadata.labels[names.LABEL_ATTEMPT] == "0"

    set_phase(kube, first.metadata.name, "Running")
    kube.wait_run_phase("train", "Running")
    for step in (100, 200):
        kube.wait_checkpoint(kube.add_checkpoint("train", store, step, 0), "Ready")
    wait_for(
        lambda: (kube.status("train").get("latestCheckpoint") or {}).get("step") == 200,
        10,
        "latestCheckpoint 200",
    )
    set_phase(kube, first.metadata.name, "Failed", exit_code=3)

    (second,) = new_pod(kube, "train", seen)
    env = env_of(second)
    assert env["CKPT_RESUME_FROM"] == target_uri(store, 200)
    assert (env["CKPT_RESUME_STEP"], env["CKPT_ATTEMPT"]) == ("200", "1")
    assert candidate_steps(env) == [200, 100]
    assert second.metadata.annotations[names.ANNOTATION_RESUME_STEP] == "200"

    set_phase(kube, second.metadata.name, "Running")
    set_phase(kube, second.metadata.name, "Failed", exit_code=137)
    (third,) = new_pod(kube, "train", seen)
    env = env_of(third)
    assert (env["CKPT_RESUME_FROM"], env["CKPT_ATTEMPT"]) == (target_uri(store, 200), "2")

    def recorded() -> bool:
        attempts = kube.status("train").get("attempts") or []
        return [a["phase"] for a in attempts] == ["Failed", "Failed", "Pending"]

    wait_for(recorded, 20, "three attempts recorded")
    status = kube.status("train")
    zero, one, two = status["attempts"]
    assert (zero["pod"], zero["exitCode"], one["exitCode"]) == (first.metadata.name, 3, 137)
    assert "resumedFrom" not in zero
    assert one["resumedFrom"]["step"] == two["resumedFrom"]["step"] == 200
    assert two["resumedFrom"]["name"] == names.checkpoint_object_name("train", 200, 0)
    assert (status["attempt"], status["restarts"], status["phase"]) == (2, 2, "Pending")
    assert {"Started", "Restarted", "AttemptFailed"} <= set(kube.event_reasons("train"))


def test_pods_not_opted_in_are_never_modified(
    kube: Cluster,
    k8s: Any,
    store: Path,
    other_namespace: str,
    start_webhook: Callable[[str], OperatorProcess],
) -> None:
    """Unlabelled pods, the operator's own attempt pods, and labelled pods in a namespace that
    did not opt in are stored exactly as sent (checked on the real API server)."""
    start_webhook("Fail")
    kube.create_run(attached_run("train", store))
    wait_webhook(kube)
    container = {"name": "c", "image": IMAGE, "env": [{"name": "A", "value": "1"}]}
    cases = {
        (kube.ns, "plain"): {"team": "ml"},
        (kube.ns, "managed"): {names.LABEL_RUN: "train", names.LABEL_ATTEMPT: "0"},
        (other_namespace, "elsewhere"): {names.LABEL_RUN: "train"},
    }
    core = client.CoreV1Api(k8s)
    for (ns, name), labels in cases.items():
        pod = {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [container]}}
        core.create_namespaced_pod(ns, pod)
    for (ns, name), labels in cases.items():
        stored = core.read_namespaced_pod(name, ns)
        assert stored.metadata.labels == labels
        assert not stored.metadata.annotations
        assert [(e.name, e.value) for e in stored.spec.containers[0].env] == [("A", "1")]


def test_an_attached_run_stays_attached_and_has_no_gang(kube: Cluster, store: Path) -> None:
    kube.create_run(attached_run("train", store))
    template = {"spec": {"containers": [{"name": "c", "image": IMAGE}]}}
    patches = {
        "cannot switch between spec.template and spec.workload": {
            "spec": {"workload": None, "template": template}
        },
        "spec.numNodes applies to runs with a template": {"spec": {"numNodes": 2}},
    }
    for message, patch in patches.items():
        with pytest.raises(ApiException) as refused:
            kube.custom.patch_namespaced_custom_object(
                names.GROUP, names.VERSION, kube.ns, names.TRAINING_RUNS, "train", patch
            )
        assert message in str(refused.value.body)


def test_refusals_name_what_to_fix(
    kube: Cluster, store: Path, start_webhook: Callable[[str], OperatorProcess]
) -> None:
    start_webhook("Ignore")
    kube.create_run(attached_run("train", store, selector={"matchLabels": {"role": "trainer"}}))
    wait_webhook(kube)
    bad = {
        "orphan": ({names.LABEL_RUN: "missing"}, "no TrainingRun missing"),
        "stray": ({names.LABEL_RUN: "train"}, "does not match spec.workload.selector"),
    }
    for name, (labels, message) in bad.items():
        pod = {
            "metadata": {"name": name, "labels": labels},
            "spec": pod_template("x", store)["spec"],
        }
        with pytest.raises(ApiException) as refused:
            kube.core.create_namespaced_pod(kube.ns, pod)
        assert message in str(refused.value.body)
        assert names.WEBHOOK_NAME in str(refused.value.body)


def _bare_pod(run: str, store: Path) -> dict[str, Any]:
    template = pod_template(run, store)
    return {"metadata": {"name": "bare", **template["metadata"]}, "spec": template["spec"]}


def test_operator_down_ignore_still_starts_pods_without_resume_env(
    kube: Cluster, store: Path, start_webhook: Callable[[str], OperatorProcess]
) -> None:
    """With failurePolicy Ignore a pod is created while the operator is down; it has only the
    template's CKPT_STORE, from which the SDK scans the store (tests/sdk/test_attach_fallback)."""
    operator = start_webhook("Ignore")
    kube.create_run(attached_run("train", store))
    wait_webhook(kube)
    operator.kill()
    started = time.monotonic()
    kube.core.create_namespaced_pod(kube.ns, _bare_pod("train", store))
    assert time.monotonic() - started < 10
    env = env_of(kube.pod("bare"))
    assert env == {names.ENV_STORE: uri(store), "KEEP": "1"}
    assert names.LABEL_ATTEMPT not in kube.pod("bare").metadata.labels


def test_operator_down_fail_refuses_pods_naming_the_webhook(
    kube: Cluster, store: Path, start_webhook: Callable[[str], OperatorProcess]
) -> None:
    operator = start_webhook("Fail")
    kube.create_run(attached_run("train", store))
    wait_webhook(kube)
    operator.kill()
    with pytest.raises(ApiException) as refused:
        kube.core.create_namespaced_pod(kube.ns, _bare_pod("train", store))
    message = str(refused.value.body)
    assert f'failed calling webhook \\"{names.WEBHOOK_NAME}\\"' in message, message
    assert kube.pod("bare") is None


def jobset_body(name: str, run: str, store: Path) -> dict[str, Any]:
    """Two Jobs of two pods each, restarted whole on any failure (defaults spelled out: the
    JobSet defaulting webhook is not registered in the local control plane)."""
    job = {
        "completionMode": "Indexed",
        "completions": 2,
        "parallelism": 2,
        "backoffLimit": 0,
        "template": pod_template(run, store),
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {
            "replicatedJobs": [{"name": "workers", "replicas": 2, "template": {"spec": job}}],
            "failurePolicy": {"maxRestarts": 3},
            "successPolicy": {"operator": "All"},
            "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
            "network": {"enableDNSHostnames": False},
        },
    }


def gang(kube: Cluster, jobset: str, restart: int) -> list[Any]:
    selector = f"jobset.sigs.k8s.io/jobset-name={jobset},{RESTART_ATTEMPT}={restart}"
    found: list[Any] = []

    def complete() -> bool:
        nonlocal found
        found = kube.core.list_namespaced_pod(kube.ns, label_selector=selector).items
        return len(found) == 4

    wait_for(complete, 60, f"the 4 pods of restart {restart} of {jobset}")
    return found


def test_jobset_gang_restart_shares_one_resume_point(
    kube: Cluster,
    store: Path,
    jobset: JobSetController,
    start_webhook: Callable[[str], OperatorProcess],
) -> None:
    """A JobSet restarts all its Jobs when one pod fails: every pod of the restart is one
    attempt and resumes from the same, newest checkpoint."""
    start_webhook("Fail")
    kube.create_run(attached_run("llm", store))
    wait_webhook(kube)
    client.CustomObjectsApi(kube.core.api_client).create_namespaced_custom_object(
        "jobset.x-k8s.io", "v1alpha2", kube.ns, "jobsets", jobset_body("llm", "llm", store)
    )
    first = gang(kube, "llm", 0)
    assert {env_of(p)["CKPT_ATTEMPT"] for p in first} == {"0"}
    assert {env_of(p)["CKPT_RESUME_FROM"] for p in first} == {""}
    for p in first:
        set_phase(kube, p.metadata.name, "Running")
    for step in (100, 200):
        kube.wait_checkpoint(kube.add_checkpoint("llm", store, step, 0), "Ready")
    set_phase(kube, first[0].metadata.name, "Failed")

    second = gang(kube, "llm", 1)
    envs = [env_of(p) for p in second]
    assert {e["CKPT_ATTEMPT"] for e in envs} == {"1"}
    assert {e["CKPT_RESUME_FROM"] for e in envs} == {target_uri(store, 200)}
    assert {e["CKPT_RESUME_CANDIDATES"] for e in envs} == {envs[0]["CKPT_RESUME_CANDIDATES"]}
    assert candidate_steps(envs[0]) == [200, 100]

    def recorded() -> bool:
        attempts = kube.status("llm").get("attempts") or []
        return [a["phase"] for a in attempts] == ["Failed", "Pending"]

    wait_for(recorded, 30, "attempt 0 failed and attempt 1 recorded")
    zero, one = kube.status("llm")["attempts"]
    assert (zero["key"], one["key"]) == (f"{RESTART_ATTEMPT}=0", f"{RESTART_ATTEMPT}=1")
    assert zero["pod"] == first[0].metadata.name and zero["exitCode"] == 1
    assert one["resumedFrom"]["step"] == 200
