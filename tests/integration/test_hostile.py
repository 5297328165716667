"""The hostile input corpus on a real API server with the operator running.

Every case of :mod:`tests.integration.hostile_corpus` is applied, then each is checked for its
precise outcome; meanwhile the operator must not crash or loop hot: its CPU time over the
corpus is measured, and afterwards it is alive, answers its liveness probe and logged no
Traceback.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.storage import layout
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for
from tests.integration.hostile_corpus import (
    BASE_RUN,
    CORPUS,
    DELETE,
    STORE,
    Case,
    Condition,
    Event,
    Rejected,
)
from tests.integration.hostile_corpus import (
    Path as FieldPath,
)

pytestmark = pytest.mark.integration

IDLE_S = SETTLE_S = 10.0
OUTCOME_TIMEOUT_S = 90.0
CPU_BOUND_S = 60.0
"""A hot-loop detector, not a benchmark: several times what the corpus costs (see the report
this test prints); one core spinning for the whole corpus would exceed it."""
SETTLED_RATE_BOUND = 0.5
"""CPU seconds per second once everything is surfaced: a hot loop runs at ~1."""
SETTLED_EVENTS_BOUND = 3
"""Events posted once everything is surfaced: an Event per maintenance tick would be ~60."""
HELD = names.checkpoint_object_name(BASE_RUN, 1, 0)
"""Deleted after the corpus is applied: the consumers with bad reports must keep holding it."""
NEWEST = names.checkpoint_object_name(BASE_RUN, 2, 0)
CUSTOM = "custom-four"
"""A Checkpoint named by hand for step 4, before the store scan saw the files."""


@dataclass
class Applied:
    cluster: Cluster
    root: Path
    operator: OperatorProcess
    names: dict[str, str] = field(default_factory=dict)
    """Case id -> the object it created or edited."""
    refused: dict[str, ApiException | None] = field(default_factory=dict)
    """Case id -> the API server's refusal (None: accepted)."""
    cpu: dict[str, float] = field(default_factory=dict)


def _set(body: dict[str, Any], path: FieldPath, value: Any) -> None:
    node: Any = body
    for key in path[:-1]:
        node = node[key] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _placed(value: Any, root: Path) -> Any:
    return value.replace(STORE, str(root)) if isinstance(value, str) else value


def _base_body(case: Case, name: str, root: Path) -> dict[str, Any]:
    if case.kind == "TrainingRun":
        return run_body(name, f"file://{root}/{name}")
    if case.kind == "Checkpoint":
        body = checkpoint_body(BASE_RUN, layout.CheckpointName(1, 0, "dir"))
        body["metadata"] = {"name": name}
        return body
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {names.LABEL_CONSUMER_OF: BASE_RUN}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def _apply(c: Cluster, case: Case, name: str, root: Path) -> None:
    """Create the case's object, or patch the live one for an edit."""
    if case.edit:
        patch: dict[str, Any] = {}
        for path, value in case.changes.items():
            _set(patch, path, _placed(value, root))
        if case.kind == "TrainingRun":
            c.custom.patch_namespaced_custom_object(
                names.GROUP, names.VERSION, c.ns, names.TRAINING_RUNS, name, patch
            )
        else:
            c.custom.patch_namespaced_custom_object(
                names.GROUP, names.VERSION, c.ns, names.CHECKPOINTS, name, patch
            )
        return
    body = _base_body(case, name, root)
    for path, value in case.changes.items():
        _set(body, path, _placed(value, root))
    if case.kind == "Pod":
        c.core.create_namespaced_pod(c.ns, body)
    elif case.kind == "TrainingRun":
        c.create_run(body)
    else:
        try:
            c.custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, c.ns, names.CHECKPOINTS, body
            )
        except ApiException as exc:
            if exc.status != 409:  # the store scan registered it first: the same object
                raise


def _object_name(index: int, case: Case) -> str:
    if case.edit:
        return BASE_RUN if case.kind == "TrainingRun" else HELD
    return case.name or f"h{index:03d}"


def _condition(c: Cluster, case: Case, name: str) -> dict[str, Any]:
    assert isinstance(case.expect, Condition)
    if case.kind == "TrainingRun":
        return c.condition(name, case.expect.type)
    status = (c.checkpoint(name) or {}).get("status") or {}
    return next((x for x in status.get("conditions") or [] if x["type"] == case.expect.type), {})


def _events(c: Cluster, name: str, reason: str) -> list[Any]:
    return [e for e in c.events(BASE_RUN) if e.reason == reason and name in (e.message or "")]


def _surfaced(c: Cluster, case: Case, name: str) -> bool:
    expect = case.expect
    if isinstance(expect, Condition):
        found = _condition(c, case, name)
        return (found.get("status"), found.get("reason")) == (expect.status, expect.reason)
    if isinstance(expect, Event):
        return bool(_events(c, name, expect.reason))
    return True


def _blocked_by(c: Cluster) -> list[str]:
    return list(((c.checkpoint(HELD) or {}).get("status") or {}).get("blockedBy") or [])


def _setup(c: Cluster, root: Path) -> None:
    """The base run, Ready steps 1 and 2, a hand-named record of step 4, a garbage manifest."""
    store = root / BASE_RUN
    for step in (1, 2, 4):
        write_checkpoint(store, BASE_RUN, step)
    for case in CORPUS:
        if "garbage_manifest" in case.setup:
            garbage = store / case.setup["garbage_manifest"]
            garbage.mkdir(parents=True)
            (garbage / layout.MANIFEST_NAME).write_text("{not json")
    custom = checkpoint_body(BASE_RUN, layout.CheckpointName(4, 0, "dir"))
    custom["metadata"]["name"] = CUSTOM
    c.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, c.ns, names.CHECKPOINTS, custom
    )
    run = c.create_run(run_body(BASE_RUN, f"file://{store}"))
    for step in (1, 2):
        c.register(run, step)
    for name in (HELD, NEWEST, CUSTOM):
        c.wait_checkpoint(name, "Ready")
    c.wait_pod(BASE_RUN, 0)
    wait_for(lambda: c.status(BASE_RUN).get("attempts"), 20, "attempt 0 in status")


@pytest.fixture(scope="module")
def applied(
    k8s: Any, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Applied]:
    """The corpus applied once, outcomes surfaced, with the operator's CPU time measured."""
    from kubernetes import client

    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "allowed"
    root.mkdir()
    ns = f"hostile-{int(time.time())}"
    client.CoreV1Api(k8s).create_namespace(client.V1Namespace(metadata={"name": ns}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CKPT_MAINTENANCE_INTERVAL_S", "1")
        mp.setenv("CKPT_SCAN_INTERVAL_S", "1")
        operator = OperatorProcess(
            kubeconfig, tmp / "operator.log", namespaces=[ns], allowed_roots=[f"file://{root}"]
        )
        operator.start()
    c = Cluster(k8s, ns)
    result = Applied(c, root, operator)
    try:
        _setup(c, root)
        result.cpu["idle"] = _cpu_over(operator, IDLE_S)
        before = operator.cpu_seconds()
        started = time.monotonic()
        for index, case in enumerate(CORPUS):
            name = result.names[case.id] = _object_name(index, case)
            try:
                _apply(c, case, name, root)
                result.refused[case.id] = None
            except ApiException as exc:
                result.refused[case.id] = exc
        c.delete(HELD)
        pending = [case for case in CORPUS if not isinstance(case.expect, Rejected)]
        wait_for(
            lambda: all(_surfaced(c, k, result.names[k.id]) for k in pending),
            OUTCOME_TIMEOUT_S,
            "every accepted case to be surfaced",
            every=1.0,
        )
        result.cpu["surfaced_s"] = time.monotonic() - started
        events = len(c.core.list_namespaced_event(ns).items)
        result.cpu["settled"] = _cpu_over(operator, SETTLE_S)
        result.cpu["corpus"] = operator.cpu_seconds() - before
        result.cpu["events"] = events
        result.cpu["events_while_settled"] = len(c.core.list_namespaced_event(ns).items) - events
        print("\noperator CPU seconds:", json.dumps(result.cpu))  # for the report
        yield result
    finally:
        operator.stop()
        client.CoreV1Api(k8s).delete_namespace(ns)


def _cpu_over(operator: OperatorProcess, seconds: float) -> float:
    before = operator.cpu_seconds()
    time.sleep(seconds)
    return operator.cpu_seconds() - before


def _cause_fields(exc: ApiException) -> set[str]:
    details = json.loads(exc.body).get("details") or {}
    return {str(cause.get("field")) for cause in details.get("causes") or []}


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_case(applied: Applied, case: Case) -> None:
    c, name = applied.cluster, applied.names[case.id]
    refusal = applied.refused[case.id]
    expect = case.expect
    if isinstance(expect, Rejected):
        assert refusal is not None, f"{case.id} was accepted"
        message = json.loads(refusal.body)["message"]
        assert refusal.status == 422, message
        assert expect.field in _cause_fields(refusal), message
        assert f"{expect.field}:" in message, message
        assert expect.says in message, message
        return
    assert refusal is None, refusal.body
    if isinstance(expect, Condition):
        found = _condition(c, case, name)
        assert (found.get("status"), found.get("reason")) == (expect.status, expect.reason)
        assert expect.says in found.get("message", ""), found
        if case.kind == "Checkpoint":
            assert c.checkpoint_phase(name) == "Invalid"
        else:
            assert c.status(name).get("phase") == "Failed"
            assert not c.attempt_pods(name), "no pod for a run that cannot start"
        return
    (event,) = _events(c, name, expect.reason)
    assert event.type == "Warning" and names.ANNOTATION_LOADED_STEP in event.message
    # No report is no report: the consumer keeps holding the checkpoint (safe deletion).
    wait_for(
        lambda: f"consumer {name} has loaded step nothing yet, needs > 1" in _blocked_by(c),
        10,
        f"{name} among the blockers of {HELD}",
    )


def test_every_category_of_issue_12_is_covered() -> None:
    assert len(CORPUS) >= 80
    assert {c.category for c in CORPUS} >= {
        "wrong type",
        "integer bounds",
        "empty",
        "over 4 KB",
        "NUL/RTL/newline",
        "bad URI scheme",
        "encoded ..",
        "loaded-step",
        "run that does not exist",
        "step directory missing",
        "duplicate",
        "edit while running",
    }


def test_deleting_what_is_no_record_leaves_the_files(applied: Applied) -> None:
    """Safe deletion: the duplicate, the Checkpoint whose path contradicts its spec, and the
    one for a missing run carrying another run's store in its annotation all name step 2's
    files; deleting them deletes the objects only."""
    c = applied.cluster
    step_two = applied.root / BASE_RUN / layout.CheckpointName(2, 0, "dir").path
    before = sorted(p.name for p in step_two.iterdir())
    for name in ("twin", "liar", "ghost-claim"):
        c.delete(name)
    for name in ("twin", "liar", "ghost-claim"):
        wait_for(lambda name=name: c.checkpoint(name) is None, 15, f"{name} to go")
    kept = wait_for(lambda: len(c.events_with_reason("StorageKept")) >= 2 and c, 10, "events")
    assert {e.involved_object.name for e in kept.events_with_reason("StorageKept")} == {
        "twin",
        "liar",
    }
    assert [e.involved_object.name for e in c.events_with_reason("StorageNotDeleted")] == [
        "ghost-claim"
    ]
    assert sorted(p.name for p in step_two.iterdir()) == before
    assert c.checkpoint_phase(NEWEST) == "Ready"


def test_the_store_scan_never_records_files_twice(applied: Applied) -> None:
    """Step 4 was recorded by hand before the scan saw it: no second record appears."""
    c = applied.cluster
    assert c.checkpoint_phase(CUSTOM) == "Ready"
    assert names.checkpoint_object_name(BASE_RUN, 4, 0) not in c.checkpoint_names()


def test_the_operator_neither_crashed_nor_looped_hot(applied: Applied) -> None:
    operator = applied.operator
    assert operator.alive
    with urllib.request.urlopen(operator.liveness_url, timeout=5) as answer:
        assert answer.status == 200
    log = operator.log_text()
    assert "Traceback" not in log, log[-4000:]
    cpu = applied.cpu
    assert cpu["corpus"] < CPU_BOUND_S, cpu
    assert cpu["settled"] / SETTLE_S < SETTLED_RATE_BOUND, cpu
    assert cpu["events_while_settled"] <= SETTLED_EVENTS_BOUND, cpu  # no Event per tick
