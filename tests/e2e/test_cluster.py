"""End to end on a real node: ``helm install`` the chart, trainer pods as real containers.

The operator image is built from the repository's ``Dockerfile`` and runs under the chart's
ServiceAccount with its own projected token; trainers and a consumer run the SDK under theirs.
The checkpoint store is a hostPath volume mounted into trainers and the operator alike. The tests
build on each other in file order (install, train, OOM, consumers, upgrade, uninstall).
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import yaml

from ckpt_operator.testing.controlplane import api_client

from .conftest import E2E, STORE_MOUNT, UID

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ckpt-operator"
EXAMPLE = REPO / "examples" / "trainingrun.yaml"
RELEASE = "ckpt-operator"
OPERATOR_NAMESPACE = "ckpt-system"
NAMESPACE = "e2e-ml"
GROUP, VERSION = "ckpt.dev", "v1alpha1"

pytestmark = [
    pytest.mark.e2e,
    # The first test pays for a cold build of binaries and images (tens of minutes); every wait
    # inside has its own bound.
    pytest.mark.timeout(3600),
]

T = TypeVar("T")


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


def _wait(what: str, check: Callable[[], T | None], timeout: float, diag: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{diag()}")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(e2e: E2E) -> Iterator[Any]:
    with api_client(e2e.kubeconfig) as client:
        yield client


def _helm(e2e: E2E, *args: str, timeout: float = 300) -> str:
    return _run(
        [str(e2e.helm), *args, "--kubeconfig", str(e2e.kubeconfig)],
        timeout=timeout,
        env=e2e.helm_env,
    )


def _values(e2e: E2E) -> dict[str, Any]:
    repository, tag = e2e.images.operator.rsplit(":", 1)
    return {
        "allowedRoots": [f"file://{STORE_MOUNT}/"],
        # Imported into the node's containerd; there is no registry to pull from.
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "trainerRole": {"bindings": [{"namespace": NAMESPACE, "serviceAccount": "trainer"}]},
        "consumerRole": {"bindings": [{"namespace": NAMESPACE, "serviceAccount": "consumer"}]},
        "extraVolumes": [
            {
                "name": "checkpoints",
                "hostPath": {"path": str(e2e.store), "type": "Directory"},
            }
        ],
        "extraVolumeMounts": [{"name": "checkpoints", "mountPath": STORE_MOUNT}],
    }


@pytest.fixture(scope="module")
def release(e2e: E2E, api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The chart installed (namespaces and service accounts for trainers and consumers made)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    for name in ("trainer", "consumer"):
        core.create_namespaced_service_account(
            NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(yaml.safe_dump(_values(e2e)))
    installed = False
    try:
        try:
            _helm(
                e2e,
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "--values",
                str(values),
                "--wait",
                "--timeout",
                "5m",
                timeout=360,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{_operator_namespace_diag(api)}") from None
        installed = True
        yield values
    finally:
        if installed and _release_exists(e2e):
            _delete_runs(api)
            subprocess.run(
                [
                    str(e2e.helm),
                    "uninstall",
                    RELEASE,
                    "--namespace",
                    OPERATOR_NAMESPACE,
                    "--kubeconfig",
                    str(e2e.kubeconfig),
                    "--wait",
                    "--timeout",
                    "2m",
                ],
                capture_output=True,
                timeout=180,
                env={**os.environ, **e2e.helm_env},
                check=False,
            )


def _release_exists(e2e: E2E) -> bool:
    proc = subprocess.run(
        [
            str(e2e.helm),
            "status",
            RELEASE,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--kubeconfig",
            str(e2e.kubeconfig),
        ],
        capture_output=True,
        timeout=60,
        env={**os.environ, **e2e.helm_env},
        check=False,
    )
    return proc.returncode == 0


# -- helpers ----------------------------------------------------------------------------------


def _custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def _run_obj(api: Any, name: str) -> dict[str, Any]:
    return cast(
        dict[str, Any],
        _custom(api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruns", name),
    )


def _checkpoints(api: Any, run: str) -> list[dict[str, Any]]:
    items = _custom(api).list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "checkpoints", label_selector=f"ckpt.dev/run={run}"
    )["items"]
    return cast(list[dict[str, Any]], items)


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
        chunks.append(f"--- operator {pod.metadata.name} ({pod.status.phase})\n{text[-4000:]}")
    return "\n".join(chunks) or "(no operator pods)"


def _operator_namespace_diag(api: Any) -> str:
    """Why the operator's pod is not ready: its conditions, container states, the events."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    parts = [_operator_logs(api)]
    for pod in core.list_namespaced_pod(OPERATOR_NAMESPACE).items:
        conditions = [(c.type, c.status, c.reason, c.message) for c in pod.status.conditions or []]
        states = [
            (s.name, s.ready, s.restart_count, s.state.to_dict() if s.state else None)
            for s in pod.status.container_statuses or []
        ]
        parts.append(f"--- pod {pod.metadata.name} {pod.status.phase} {conditions} {states}")
    for event in core.list_namespaced_event(OPERATOR_NAMESPACE).items:
        parts.append(f"event {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(parts)


def _diag(api: Any, run: str | None = None) -> Callable[[], str]:
    def collect() -> str:
        from kubernetes import client

        core = client.CoreV1Api(api)
        parts = [_operator_logs(api)]
        if run:
            try:
                parts.append(yaml.safe_dump(_run_obj(api, run).get("status")))
            except Exception as error:
                parts.append(f"(no run {run}: {error})")
        for pod in core.list_namespaced_pod(NAMESPACE).items:
            statuses = [
                (s.name, s.state.to_dict() if s.state else None)
                for s in pod.status.container_statuses or []
            ]
            try:
                log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)[-2000:]
            except Exception as error:
                log = f"(no log: {error})"
            parts.append(f"--- pod {pod.metadata.name} {pod.status.phase} {statuses}\n{log}")
        return "\n".join(parts)

    return collect


def _trainer_run(e2e: E2E, name: str, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """examples/trainingrun.yaml, runnable on the node: the local trainer image, our uid, the
    store volume, the trainer ServiceAccount."""
    run = cast(dict[str, Any], yaml.safe_load(EXAMPLE.read_text()))
    run = copy.deepcopy(run)
    run["metadata"] = {"name": name, "namespace": NAMESPACE}
    run["spec"]["store"]["uri"] = f"file://{STORE_MOUNT}/{name}"
    pod = run["spec"]["template"]["spec"]
    pod["serviceAccountName"] = "trainer"
    pod["securityContext"] = {"runAsUser": UID, "runAsGroup": UID, "runAsNonRoot": True}
    pod["volumes"] = [
        {"name": "checkpoints", "hostPath": {"path": str(e2e.store), "type": "Directory"}}
    ]
    container = pod["containers"][0]
    container["image"] = e2e.images.trainer
    container["imagePullPolicy"] = "Never"
    container["volumeMounts"] = [{"name": "checkpoints", "mountPath": STORE_MOUNT}]
    container["resources"] = {"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m"}}
    current = {e["name"]: e for e in container.get("env", [])}
    for key, value in (env or {}).items():
        current[key] = {"name": key, "value": value}
    container["env"] = list(current.values())
    return run


def _create(api: Any, run: dict[str, Any]) -> None:
    _custom(api).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruns", run)


def _phase(api: Any, name: str, *phases: str) -> dict[str, Any] | None:
    status = _run_obj(api, name).get("status") or {}
    return status if status.get("phase") in phases else None


def _delete_runs(api: Any, timeout: float = 180) -> None:
    """Delete every TrainingRun in NAMESPACE and wait until they and their Checkpoints are gone
    (the operator releases its finalizers)."""
    custom = _custom(api)
    runs = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruns")
    for obj in runs["items"]:
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "trainingruns", obj["metadata"]["name"]
        )

    def gone() -> bool:
        return not any(
            custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)["items"]
            for plural in ("trainingruns", "checkpoints")
        )

    _wait("TrainingRuns and Checkpoints deleted", gone, timeout, _diag(api))


# -- tests ------------------------------------------------------------------------------------


def test_operator_is_ready_under_the_charts_service_account(
    e2e: E2E, release: Path, api: Any
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(
        OPERATOR_NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    assert pod.spec.service_account_name == RELEASE
    # The token is the kubelet-projected one of that account: no kubeconfig, no impersonation.
    projected = [v for v in pod.spec.volumes if v.projected is not None]
    assert any(
        s.service_account_token is not None for v in projected for s in v.projected.sources
    ), pod.spec.volumes
    assert pod.spec.containers[0].image == e2e.images.operator
    ready = {c.type: c.status for c in pod.status.conditions}
    assert ready.get("Ready") == "True", pod.status
    status = pod.status.container_statuses[0]
    assert status.ready and status.restart_count == 0, status
    # It talks to the API with that token: its startup scan (list TrainingRuns) went through.
    logs = core.read_namespaced_pod_log(pod.metadata.name, OPERATOR_NAMESPACE)
    assert "403" not in logs and "Unauthorized" not in logs, logs[-3000:]


def test_example_run_dies_then_resumes_from_the_newest_checkpoint(
    e2e: E2E, release: Path, api: Any
) -> None:
    name = "mlp-demo"
    _create(api, _trainer_run(e2e, name))
    status = _wait(
        "example run Succeeded",
        lambda: _phase(api, name, "Succeeded", "Failed"),
        900,
        _diag(api, name),
    )
    assert status["phase"] == "Succeeded", _diag(api, name)()
    first, second = status["attempts"][:2]
    # Attempt 0: FAIL_AT_STEP=120 exits 1 from a real container; the kubelet reports it.
    assert first["phase"] == "Failed" and first["exitCode"] == 1, first
    # Attempt 1 resumed from the newest checkpoint attempt 0 committed (step 100), and finished.
    assert second["phase"] == "Succeeded", second
    assert second["resumedFrom"]["step"] == 100 and second["resumedFrom"]["attempt"] == 0, second
    assert status["latestCheckpoint"]["step"] == 300, status
    # The operator and the trainers saw the same volume: the committed checkpoints are on it.
    committed = sorted(p.name for p in (e2e.store / name).iterdir())
    assert any("300" in entry for entry in committed), committed


def test_oom_killed_container_is_recorded_and_handled_by_the_rules(
    e2e: E2E, release: Path, api: Any
) -> None:
    name = "oom"
    run = _trainer_run(e2e, name)
    container = run["spec"]["template"]["spec"]["containers"][0]
    # Touch 1 GiB under a 64 MiB limit: the kernel's OOM killer ends it, the kubelet says so.
    container["command"] = ["python", "-c", "b = b'x' * (1 << 30); print(len(b))"]
    container["resources"] = {"limits": {"memory": "64Mi"}}
    run["spec"]["restartPolicy"] = {
        "maxRestarts": 3,
        "backoff": {"initialSeconds": 1, "maxSeconds": 5},
        "rules": [{"action": "FailRun", "onReasons": ["OOMKilled"]}],
    }
    _create(api, run)
    status = _wait(
        "OOM run Failed", lambda: _phase(api, name, "Succeeded", "Failed"), 300, _diag(api, name)
    )
    assert status["phase"] == "Failed", status
    attempts = status["attempts"]
    assert len(attempts) == 1, attempts  # FailRun: no restart spent
    assert attempts[0]["reason"] == "OOMKilled", attempts[0]
    assert attempts[0]["exitCode"] == 137, attempts[0]
    assert attempts[0]["action"] == "FailRun", attempts[0]


def test_kubelet_eviction_is_recorded_and_ignored_by_the_rules(
    e2e: E2E, release: Path, api: Any
) -> None:
    name = "evicted"
    run = _trainer_run(e2e, name)
    container = run["spec"]["template"]["spec"]["containers"][0]
    # Attempt 0 writes past its ephemeral-storage limit: the kubelet's eviction manager evicts
    # the pod (status.reason Evicted). Attempt 1 just succeeds.
    container["command"] = [
        "sh",
        "-c",
        'if [ "$CKPT_ATTEMPT" = 0 ]; then head -c 64M /dev/zero > /tmp/fill; sleep 600; fi',
    ]
    container["resources"] = {"limits": {"memory": "64Mi", "ephemeral-storage": "16Mi"}}
    # The example's rules: Ignore for Evicted, so no restart is spent on it.
    run["spec"]["restartPolicy"]["maxRestarts"] = 0
    _create(api, run)
    status = _wait(
        "evicted run finished",
        lambda: _phase(api, name, "Succeeded", "Failed"),
        240,
        _diag(api, name),
    )
    assert status["phase"] == "Succeeded", status
    first, second = status["attempts"][:2]
    assert first["phase"] == "Failed" and first["reason"] == "Evicted", first
    assert first["action"] == "Ignore", first
    assert second["phase"] == "Succeeded", second
    assert status.get("restarts", 0) == 0, status


CONSUMER = """
import logging, os, sys, time
from ckpt_operator.sdk.consumer import Consumer
logging.basicConfig(level=logging.INFO)
go = os.path.join("{mount}", "{run}-consumer-go")
while not os.path.exists(go):
    time.sleep(1)
consumer = Consumer.from_env()
ref = consumer.latest()
consumer.load_weights(ref)
assert consumer.report_loaded(ref.step), "report failed"
print("loaded", ref.step, flush=True)
while True:
    time.sleep(60)
"""


def test_consumer_reports_its_loaded_step_and_gc_waits_for_it(
    e2e: E2E, release: Path, api: Any
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    name = "served"
    run = _trainer_run(
        e2e,
        name,
        env={"TOTAL_STEPS": "200", "SAVE_EVERY": "50", "EXPORT_EVERY": "50", "FAIL_AT_STEP": "0"},
    )
    run["spec"]["retention"] = {"keepLast": 1}
    run["spec"]["consumers"] = {"reportTimeoutSeconds": 3600}
    # The consumer starts first and reports nothing until told: it blocks every deletion.
    consumer = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-server", "labels": {"ckpt.dev/consumer-of": name}},
        "spec": {
            "serviceAccountName": "consumer",
            "securityContext": {"runAsUser": UID, "runAsGroup": UID, "runAsNonRoot": True},
            "restartPolicy": "Never",
            "volumes": [
                {"name": "checkpoints", "hostPath": {"path": str(e2e.store), "type": "Directory"}}
            ],
            "containers": [
                {
                    "name": "server",
                    "image": e2e.images.trainer,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", CONSUMER.format(mount=STORE_MOUNT, run=name)],
                    "volumeMounts": [{"name": "checkpoints", "mountPath": STORE_MOUNT}],
                    "env": [
                        {"name": "CKPT_STORE", "value": f"file://{STORE_MOUNT}/{name}"},
                        {"name": "CKPT_RUN", "value": name},
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {
                            "name": "POD_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                    ],
                }
            ],
        },
    }
    core.create_namespaced_pod(NAMESPACE, consumer)
    _wait(
        "consumer pod Running",
        lambda: core.read_namespaced_pod(f"{name}-server", NAMESPACE).status.phase == "Running",
        120,
        _diag(api),
    )
    _create(api, run)
    _wait("run Succeeded", lambda: _phase(api, name, "Succeeded"), 600, _diag(api, name))

    def held() -> list[dict[str, Any]] | None:
        # Retention (keepLast 1) has expired the older checkpoints, but they stay: the
        # consumer has loaded nothing yet.
        terminating = [c for c in _checkpoints(api, name) if c["metadata"].get("deletionTimestamp")]
        return terminating or None

    waiting = _wait("retention deletes, blocked", held, 120, _diag(api, name))
    time.sleep(10)  # blocked means blocked: nothing goes while the consumer is silent
    still = {c["metadata"]["name"] for c in _checkpoints(api, name)}
    assert {c["metadata"]["name"] for c in waiting} <= still
    for ckpt in waiting:
        path = ckpt["spec"]["path"]
        assert (e2e.store / name / path).exists(), path

    (e2e.store / f"{name}-consumer-go").touch()
    pod = _wait(
        "consumer reports its loaded step",
        lambda: (
            lambda p: p if (p.metadata.annotations or {}).get("ckpt.dev/loaded-step") else None
        )(core.read_namespaced_pod(f"{name}-server", NAMESPACE)),
        180,
        _diag(api, name),
    )
    loaded = int(pod.metadata.annotations["ckpt.dev/loaded-step"])
    assert loaded == 200, loaded

    def released() -> bool:
        names = {c["metadata"]["name"] for c in _checkpoints(api, name)}
        return not names & {c["metadata"]["name"] for c in waiting}

    _wait("GC after the consumer moved on", released, 180, _diag(api, name))
    for ckpt in waiting:
        assert not (e2e.store / name / ckpt["spec"]["path"]).exists(), ckpt["spec"]["path"]
    core.delete_namespaced_pod(f"{name}-server", NAMESPACE, grace_period_seconds=0)


def test_helm_upgrade_then_uninstall_leave_no_stuck_finalizers(
    e2e: E2E, release: Path, api: Any
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment(RELEASE, OPERATOR_NAMESPACE).metadata.generation
    # A changed pod template rolls the operator over to a new pod.
    _helm(
        e2e,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--values",
        str(release),
        "--set",
        "podAnnotations.e2e/upgraded=yes",
        "--wait",
        "--timeout",
        "5m",
        timeout=360,
    )
    deployment = apps.read_namespaced_deployment(RELEASE, OPERATOR_NAMESPACE)
    assert deployment.metadata.generation > before

    def rolled() -> bool:
        pods = core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
        ).items
        return len(pods) == 1 and (pods[0].metadata.annotations or {}).get("e2e/upgraded") == "yes"

    _wait("operator rolled over", rolled, 180, _diag(api))

    # The upgraded operator still owns the finalizers: deleting every run frees everything.
    _delete_runs(api)
    _helm(e2e, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout", "2m")
    _wait(
        "operator pod gone",
        lambda: not core.list_namespaced_pod(OPERATOR_NAMESPACE).items,
        120,
        _diag(api),
    )
    core.delete_namespace(NAMESPACE)
    core.delete_namespace(OPERATOR_NAMESPACE)

    def namespaces_gone() -> bool:
        names = {ns.metadata.name for ns in core.list_namespace().items}
        return not names & {NAMESPACE, OPERATOR_NAMESPACE}

    _wait("namespaces deleted (nothing stuck on a finalizer)", namespaces_gone, 180, _diag(api))
    custom = _custom(api)
    for plural in ("trainingruns", "checkpoints"):
        left = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        assert not left, [(o["metadata"]["name"], o["metadata"].get("finalizers")) for o in left]
