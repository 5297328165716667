"""Checkpoint lifecycle on the real API server with real storage: verification, consumer-gated
deletion, retention, the finalizer under failures and SIGKILL, path attacks, store scan."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.sdk import Consumer
from ckpt_operator.sdk.registry import KubeRegistry
from ckpt_operator.storage import layout
from ckpt_operator.storage.manifest import verify
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.measure import request_counts
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration


@dataclass
class Env:
    cluster: Cluster
    root: Path
    """Allowed root; each run's store is a directory under it."""
    operator: OperatorProcess

    def store(self, run: str) -> Store:
        return Store.from_uri(f"file://{self.root}/{run}")

    def run(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.cluster.create_run(run_body(name, f"file://{self.root}/{name}", **kw))

    def ready(self, run: dict[str, Any], *steps: int, fmt: names.Format = "dir") -> list[str]:
        """Write and register checkpoints; wait until each is Ready."""
        store = self.store(run["metadata"]["name"])
        ckpts = []
        for step in steps:
            write_checkpoint(store, run["metadata"]["name"], step, fmt=fmt)
            ckpts.append(self.cluster.register(run, step, fmt=fmt))
        for name in ckpts:
            self.cluster.wait_checkpoint(name, "Ready")
        return ckpts

    def path(self, run: str, step: int, fmt: names.Format = "dir") -> Path:
        return self.root / run / layout.CheckpointName(step, 0, fmt).path


@pytest.fixture
def env(
    k8s: Any,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> Env:
    monkeypatch.setenv("CKPT_MAINTENANCE_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SCAN_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SWEEP_GRACE_S", "30")
    root = tmp_path / "allowed"
    root.mkdir()
    operator = start_operator(namespace, allowed_roots=(f"file://{root}",))
    return Env(Cluster(k8s, namespace), root, operator)


def test_consumer_lag_holds_storage_until_a_greater_step_is_reported(env: Env) -> None:
    """Safe deletion: step 5 expires by retention while the consumer has loaded 5."""
    c = env.cluster
    run = env.run("lag", retention={"keepLast": 1})
    c.consumer("infer", "lag", loaded=5)
    five, six = env.ready(run, 5, 6)
    body = wait_for(
        lambda: (b := c.checkpoint(five)) and (b.get("status") or {}).get("blockedBy") and b,
        15,
        "retention to mark step 5 and the consumer to block it",
    )
    assert body["metadata"].get("deletionTimestamp")
    assert body["status"]["phase"] == "Deleting"
    assert any("consumer infer" in b for b in body["status"]["blockedBy"])
    store = env.store("lag")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the consumer can load step 5 at any moment
        result = verify(store, layout.CheckpointName(5, 0, "dir").path, "full")
        assert result.ok, result.reason
        time.sleep(0.2)
    c.report("infer", 6)
    reported = time.monotonic()
    wait_for(lambda: not env.path("lag", 5).exists(), 5, "step 5's storage to go")
    assert time.monotonic() - reported < 3
    wait_for(lambda: c.checkpoint(five) is None, 5, "the step 5 record to go")
    assert env.path("lag", 6).exists() and c.checkpoint_phase(six) == "Ready"


def _lock(path: Path) -> Callable[[], None]:
    """Make ``path`` (a directory) impossible to delete for this user; returns the unlock."""
    victim = path / "model.bin"
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(victim)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {done.stderr.decode().strip()}")
        return lambda: subprocess.run(["chattr", "-i", str(victim)], check=True)
    path.chmod(0o500)
    return lambda: path.chmod(0o700)


def test_missing_files_succeed_and_storage_errors_retry_without_losing_the_record(
    env: Env,
) -> None:
    c = env.cluster
    run = env.run("fail")
    one, two, _three = env.ready(run, 1, 2, 3)
    shutil.rmtree(env.path("fail", 1))
    c.delete(one)
    wait_for(lambda: c.checkpoint(one) is None, 10, "a checkpoint with missing files to be deleted")

    unlock = _lock(env.path("fail", 2))
    try:
        c.delete(two)
        body = wait_for(
            lambda: (
                (b := c.checkpoint(two))
                and any(
                    x["type"] == "DeleteFailed" and x["status"] == "True"
                    for x in (b.get("status") or {}).get("conditions", [])
                )
                and b
            ),
            15,
            "a DeleteFailed condition",
        )
        failed = next(x for x in body["status"]["conditions"] if x["type"] == "DeleteFailed")
        assert "step-0000000002.attempt-0" in failed["message"]
        wait_for(lambda: c.events_with_reason("DeleteFailed"), 10, "a DeleteFailed event")
        time.sleep(2)
        assert c.checkpoint(two) is not None, "the record must stay while its storage cannot go"
    finally:
        unlock()
    wait_for(lambda: c.checkpoint(two) is None, 30, "the retry to delete step 2")
    assert not env.path("fail", 2).exists()


def test_newest_ready_and_resume_target_survive_retention_and_bulk_delete(
    env: Env, k8s: Any
) -> None:
    """The TrainingRun controller resumes attempt 1 from step 4; retention (keepLast 1) and a
    bulk delete keep it and the newest, until forced or until the attempt ends."""
    c = env.cluster
    fast = {"restartPolicy": {"maxRestarts": 5, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}}
    run = env.run("keep", retention={"keepLast": 1}, **fast)
    c.wait_pod("keep", 0)
    ckpts = env.ready(run, 1, 2, 3, 4)
    wait_for(lambda: c.checkpoint_names() == {ckpts[3]}, 20, "retention to expire steps 1-3")
    assert [p.name for p in (env.root / "keep").iterdir()] == [env.path("keep", 4).name]

    c.fail_pod("keep", 0)
    wait_for(
        lambda: (
            [(a.get("resumedFrom") or {}).get("name") for a in c.status("keep")["attempts"]][-1:]
            == [ckpts[3]]
        ),
        20,
        "attempt 1 to resume from step 4",
    )
    (five,) = env.ready(run, 5)
    time.sleep(2.5)  # several retention passes
    assert not (c.checkpoint(ckpts[3]) or {})["metadata"].get("deletionTimestamp")
    assert env.path("keep", 4).exists()

    for name in (ckpts[3], five):  # a bulk delete without --force
        c.delete(name)
    blocked = {
        n: wait_for(
            lambda n=n: (c.checkpoint(n) or {}).get("status", {}).get("blockedBy"),
            10,
            f"{n} blocked",
        )
        for n in (ckpts[3], five)
    }
    assert blocked[ckpts[3]] == ["resume target of a pending or running attempt of keep"]
    assert blocked[five] == ["newest Ready checkpoint of keep"]
    time.sleep(1.5)
    assert env.path("keep", 4).exists() and env.path("keep", 5).exists()

    c.annotate(five, {names.ANNOTATION_FORCE_DELETE: "true"})
    wait_for(lambda: c.checkpoint(five) is None, 15, "the forced newest to go")
    assert not env.path("keep", 5).exists()
    c.fail_pod("keep", 1)  # attempt 1 ends: step 4 is no longer its resume target
    wait_for(
        lambda: (
            (c.checkpoint(ckpts[3]) or {}).get("status", {}).get("blockedBy")
            == ["newest Ready checkpoint of keep"]
        ),
        15,
        "the resume-target protection to lapse (step 4 stays the newest Ready)",
    )
    assert env.path("keep", 4).exists()


def test_path_attacks_are_refused_and_nothing_outside_is_touched(env: Env, tmp_path: Path) -> None:
    """Confined paths: paths and store roots outside what is allowed are refused."""
    c = env.cluster
    run = env.run("safe")
    for bad in ("../../etc", "/etc", "a/../../etc", "file:///etc/passwd"):
        body = {
            "apiVersion": "ckpt.dev/v1alpha1",
            "kind": "Checkpoint",
            "metadata": {"name": f"bad-{abs(hash(bad))}"},
            "spec": {"run": "safe", "step": 1, "attempt": 0, "path": bad},
        }
        with pytest.raises(ApiException) as caught:
            c.custom.create_namespaced_custom_object(
                "ckpt.dev", "v1alpha1", c.ns, "checkpoints", body
            )
        assert caught.value.status == 422, bad

    outside = tmp_path / "outside"
    outside_store = Store.from_uri(f"file://{outside}")
    victim = outside / write_checkpoint(outside_store, "safe", 7)
    before = sorted(p.name for p in victim.iterdir())
    (env.root / "safe").mkdir(exist_ok=True)
    link = env.path("safe", 7)
    link.symlink_to(victim, target_is_directory=True)
    name = c.register(run, 7)
    body = c.wait_checkpoint(name, "Invalid")
    assert "outside" in body["status"]["message"] and "symlink" in body["status"]["message"]
    c.annotate(name, {names.ANNOTATION_FORCE_DELETE: "true"})
    c.delete(name)
    wait_for(lambda: c.checkpoint(name) is None, 10, "the record of the symlinked checkpoint to go")
    assert sorted(p.name for p in victim.iterdir()) == before

    # A run whose store root is outside the allowed roots: refused, files untouched.
    rogue = c.create_run(run_body("rogue", f"file://{outside}"))
    rogue_name = c.register(rogue, 7)
    body = c.wait_checkpoint(rogue_name, "Invalid")
    assert "not inside any allowed root" in body["status"]["message"]
    time.sleep(2)  # a few store-scan ticks: nothing registered from there
    assert {n for n in c.checkpoint_names() if n.startswith("rogue")} == {rogue_name}
    c.annotate(rogue_name, {names.ANNOTATION_FORCE_DELETE: "true"})
    c.delete(rogue_name)
    wait_for(lambda: c.checkpoint(rogue_name) is None, 10, "the rogue record to go")
    assert sorted(p.name for p in victim.iterdir()) == before
    assert link.is_symlink()


def test_sigkill_at_any_instant_deletes_nothing_unsafe_and_leaves_no_finalizer(
    env: Env,
) -> None:
    """Crash convergence: kill during a bulk deletion and while blocked; restart converges."""
    c = env.cluster
    run = env.run("kill")
    c.consumer("infer", "kill", loaded=3)
    ckpts = env.ready(run, 1, 2, 3, 4, 5, 6)
    for name in ckpts[:5]:
        c.delete(name)
    time.sleep(0.3)
    env.operator.kill()
    env.operator.start()
    wait_for(
        lambda: c.checkpoint(ckpts[0]) is None and c.checkpoint(ckpts[1]) is None, 15, "1, 2 to go"
    )
    for step, name in zip(range(3, 6), ckpts[2:5], strict=True):
        wait_for(
            lambda name=name: (c.checkpoint(name) or {}).get("status", {}).get("blockedBy"),
            10,
            name,
        )
        assert env.path("kill", step).exists()
    env.operator.kill()  # while the finalizers wait for the consumer
    time.sleep(1)
    env.operator.start()
    time.sleep(2)
    for step in (3, 4, 5, 6):
        assert env.path("kill", step).exists(), f"step {step} deleted unsafely after restart"
    c.report("infer", 6)
    wait_for(lambda: c.checkpoint_names() == {ckpts[5]}, 15, "3, 4, 5 to go after the report")
    assert [p.name for p in (env.root / "kill").iterdir()] == [env.path("kill", 6).name]

    c.core.delete_namespaced_pod("infer", c.ns)
    c.delete("kill", "trainingruns")
    wait_for(
        lambda: c.run("kill") is None and not c.checkpoint_names(),
        30,
        "the run and its checkpoints",
    )
    assert list((env.root / "kill").iterdir()) == []


def _metric(operator: OperatorProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics").read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_store_scan_registers_committed_checkpoints_and_sweeps_orphans(env: Env) -> None:
    c = env.cluster
    run = env.run("scan")
    store = env.store("scan")
    write_checkpoint(store, "scan", 1, fmt="dir")
    write_checkpoint(store, "scan", 2, fmt="tar")
    old_tmp = env.root / "scan" / ".tmp.step-0000000003.attempt-0.aaaa"
    new_tmp = env.root / "scan" / ".tmp.step-0000000004.attempt-0.bbbb"
    for tmp in (old_tmp, new_tmp):
        tmp.mkdir()
        (tmp / "model.bin").write_bytes(b"x" * 1000)
    past = time.time() - 3600
    os.utime(old_tmp / "model.bin", (past, past))
    os.utime(old_tmp, (past, past))
    one, two = (names.checkpoint_object_name("scan", s, 0) for s in (1, 2))
    wait_for(lambda: {one, two} <= c.checkpoint_names(), 15, "the scan to register steps 1 and 2")
    for name in (one, two):
        body = c.wait_checkpoint(name, "Ready")
        assert body["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    wait_for(lambda: not old_tmp.exists(), 10, "the old temporary to be swept")
    assert new_tmp.exists(), "a fresh temporary is work in progress"
    assert _metric(env.operator, "ckpt_operator_orphans_swept_total") >= 1
    assert _metric(env.operator, "ckpt_operator_orphan_bytes_swept_total") >= 1000

    c.delete("scan", "trainingruns")  # deleting the run deletes its checkpoints
    wait_for(lambda: c.run("scan") is None, 30, "the run to go")
    assert not c.checkpoint_names()
    assert list((env.root / "scan").iterdir()) == []


def test_a_silent_consumer_stops_blocking_and_is_flagged(env: Env) -> None:
    c = env.cluster
    run = env.run("quiet", consumers={"reportTimeoutSeconds": 3})
    c.consumer("mute", "quiet")
    one, _two = env.ready(run, 1, 2)
    c.delete(one)
    wait_for(lambda: (c.checkpoint(one) or {}).get("status", {}).get("blockedBy"), 5, "blocked")
    wait_for(lambda: c.checkpoint(one) is None, 15, "the silent consumer to stop blocking")
    assert not env.path("quiet", 1).exists()

    def flagged() -> bool:
        status = (c.run("quiet") or {}).get("status") or {}
        return any(
            x["type"] == "ConsumersHealthy" and x["status"] == "False"
            for x in status.get("conditions", [])
        )

    wait_for(flagged, 10, "ConsumersHealthy=False")
    events = wait_for(lambda: c.events_with_reason("ConsumerSilent"), 10, "a ConsumerSilent event")
    assert events[0].type == "Warning" and "mute" in events[0].message


def test_a_consumer_that_keeps_serving_one_step_stays_protected_while_alive(env: Env) -> None:
    """Liveness comes from the consumer being alive (its heartbeat), not from the step
    changing: serving step 1 for longer than reportTimeoutSeconds keeps step 1; once the
    heartbeats stop, it turns silent and stops blocking (safe deletion)."""
    c = env.cluster
    run = env.run("serve", consumers={"reportTimeoutSeconds": 3})
    c.consumer("server", "serve")
    consumer = Consumer(
        env.store("serve"),
        run="serve",
        pod="server",
        registry=KubeRegistry(c.ns, c.custom, c.core),
    )
    one, _two = env.ready(run, 1, 2)
    assert consumer.report_loaded(1)
    c.delete(one)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert consumer.report_loaded(1)  # still serving step 1: a heartbeat
        assert c.checkpoint(one) is not None, "deleted while its consumer was alive"
        time.sleep(1)
    assert env.path("serve", 1).exists()
    wait_for(lambda: c.checkpoint(one) is None, 15, "the consumer to turn silent")
    assert not env.path("serve", 1).exists()


def test_a_store_entry_escaping_the_store_is_skipped_named_and_the_rest_registered(
    env: Env, tmp_path: Path
) -> None:
    """A symlink out of the store (named like a checkpoint, and as a temporary) must not stop
    the scan or the sweep: it is skipped with a Warning naming it, and a valid checkpoint that
    sorts after it is still registered (confined paths)."""
    c = env.cluster
    env.run("evil")
    outside = tmp_path / "outside"
    target = outside / write_checkpoint(outside, "evil", 5)
    store_dir = env.root / "evil"
    store_dir.mkdir(exist_ok=True)
    (store_dir / "step-0000000005.attempt-0").symlink_to(target, target_is_directory=True)
    (store_dir / ".tmp.step-0000000007.attempt-0.cccc").symlink_to(outside)
    write_checkpoint(env.store("evil"), "evil", 6)
    six = names.checkpoint_object_name("evil", 6, 0)
    wait_for(lambda: six in c.checkpoint_names(), 15, "step 6 to be registered")
    c.wait_checkpoint(six, "Ready")
    warned = wait_for(
        lambda: [
            e
            for e in c.events("evil")
            if e.reason == "UnsafeStoreEntry" and "step-0000000005.attempt-0" in e.message
        ],
        15,
        "a Warning naming the entry",
    )
    assert warned[0].type == "Warning"
    assert names.checkpoint_object_name("evil", 5, 0) not in c.checkpoint_names()
    assert target.is_dir() and (target / "model.bin").exists(), "nothing outside is touched"
    assert "checkpoint-maintenance' failed" not in env.operator.log_text()


def test_restarting_the_operator_costs_no_write_per_verified_checkpoint(env: Env, k8s: Any) -> None:
    """Checkpoints registered while the operator is down are verified when it starts; the
    ones it verified before cost nothing at a restart (no resume handlers: a large cluster
    would otherwise pay one patch per checkpoint at every operator start)."""
    c = env.cluster
    run = env.run("restart")
    before_down = env.ready(run, 1, 2, 3, 4, 5, 6)
    env.operator.stop()
    store = env.store("restart")
    write_checkpoint(store, "restart", 7)
    late = c.register(run, 7)
    counts = request_counts(k8s)
    env.operator.start()
    c.wait_checkpoint(late, "Ready")
    time.sleep(3)
    writes = {
        key: n
        for key, n in (request_counts(k8s) - counts).items()
        if key[0].startswith("checkpoints") and key[1] in ("PATCH", "PUT", "POST")
    }
    # The late one alone (finalizer, Kopf's bookkeeping, status): nothing for the other six.
    assert sum(writes.values()) <= 6, writes
    assert all(c.checkpoint_phase(n) == "Ready" for n in before_down)
