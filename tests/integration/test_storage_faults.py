"""Storage faults, through the storage interface and for real: failing and slow deletions,
a slow store, a read-only store root, a full filesystem, a transient read error.

Through the interface the operator runs with ``ckpt_operator.testing.faultfs`` (a local fsspec
filesystem failing or stalling on cue, its plan rewritten by the test); for real, the test
makes a directory immutable (``chattr +i``: root ignores permission bits) and mounts a tiny
tmpfs. In every case nothing a resume target needs is lost (the invariant checker watches the
stores), failed deletions back off and say so (condition ``DeleteFailed``, a Warning event).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.sdk.writer import write_checkpoint as commit
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, candidate_steps, env_of, run_body
from ckpt_operator.testing.faultfs import OPS, PLAN_ENV, Fault, FaultPlan
from ckpt_operator.testing.observer import Observer, committed_entries
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@dataclass
class Bed:
    cluster: Cluster
    root: Path
    plan: FaultPlan
    operator: OperatorProcess
    observer: Observer

    def run(self, name: str = "r", **extra: Any) -> Path:
        store = self.root / name
        store.mkdir(exist_ok=True)
        self.observer.watch_store(name, store)
        self.cluster.create_run(run_body(name, f"file://{store}", **extra))
        self.cluster.wait_pod(name, 0)
        return store

    def ready(self, run: str, *steps: int, attempt: int = 0) -> list[str]:
        made = [self.cluster.add_checkpoint(run, self.root / run, s, attempt) for s in steps]
        for name in made:
            self.cluster.wait_checkpoint(name, "Ready")
        return made

    def judged(self) -> None:
        self.observer.settle()
        violations = self.observer.verdict() + self.observer.verify_stores()
        assert not violations, "\n".join(map(str, violations))
        assert "Traceback" not in self.operator.log_text(), self.operator.log_text()[-3000:]


@pytest.fixture
def bed(
    k8s: Any,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Bed]:
    monkeypatch.setenv("CKPT_MAINTENANCE_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SCAN_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SWEEP_GRACE_S", "4")
    plan = FaultPlan(tmp_path / "faults.json")
    monkeypatch.setenv(PLAN_ENV, str(plan.path))
    root = tmp_path / "allowed"
    root.mkdir()
    operator = OperatorProcess(
        kubeconfig,
        tmp_path / "operator.log",
        namespaces=[namespace],
        allowed_roots=[f"file://{root}"],
        module="ckpt_operator.testing.faultfs",
    )
    with Observer(kubeconfig, namespace) as observer, operator:
        yield Bed(Cluster(k8s, namespace), root, plan, operator, observer)


def delete_failed(cluster: Cluster, name: str) -> dict[str, Any]:
    conditions = ((cluster.checkpoint(name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "DeleteFailed"), {})


def kopf_retries(cluster: Cluster, name: str) -> int:
    """The most retries Kopf's progress annotations record on the checkpoint."""
    annotations = ((cluster.checkpoint(name) or {}).get("metadata") or {}).get("annotations")
    found = [0]
    for value in (annotations or {}).values():
        with contextlib.suppress(ValueError):
            progress = json.loads(value)
            if isinstance(progress, dict):
                found.append(int(progress.get("retries") or 0))
    return max(found)


def test_failing_deletions_back_off_say_why_and_spare_the_resume_target(bed: Bed) -> None:
    """EIO on every removal of step 10 four times, across an operator SIGKILL: the record
    stays with DeleteFailed and a Warning, the retries space out, then it goes; the resume
    target (step 30) is untouched throughout and the next attempt resumes from it."""
    c = bed.cluster
    store = bed.run()
    ten, _twenty, thirty = bed.ready("r", 10, 20, 30)
    bed.plan.set(Fault("rm-10", "rm", match="step-0000000010", times=4))
    c.delete(ten)
    wait_for(lambda: delete_failed(c, ten).get("status") == "True", 20, "DeleteFailed")
    assert "injected EIO" in delete_failed(c, ten)["message"]
    warning = wait_for(lambda: c.events_with_reason("DeleteFailed"), 10, "a Warning event")
    assert warning[0].type == "Warning" and "step-0000000010" in warning[0].message
    wait_for(lambda: kopf_retries(c, ten) >= 2, 20, "a retry, recorded")
    bed.operator.kill()  # mid-backoff (not before the retry count is stored: that restarts it)
    bed.operator.start()
    wait_for(lambda: c.checkpoint(ten) is None, 60, "step 10 to go once the faults stop")
    assert not (store / CheckpointName(10, 0, "dir").path).exists()
    at = [f["at"] for f in bed.plan.injected("rm-10")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(at) == 4 and gaps[-1] > 2 * gaps[0], f"no backoff: {gaps}"
    c.fail_pod("r", 0)
    env = env_of(c.wait_pod("r", 1))
    assert candidate_steps(env) == [30, 20] and env["CKPT_RESUME_STEP"] == "30"
    assert c.checkpoint_phase(thirty) == "Ready"
    bed.judged()


def test_a_slow_store_delays_no_restart_and_the_sweep_spares_fresh_temporaries(
    bed: Bed,
) -> None:
    """Every storage call takes 0.3 s: verification and deletion slow down, restarts do not
    (the controller never touches storage); a SIGKILL mid-deletion converges; the sweep
    removes an abandoned temporary but never the one a save keeps writing to."""
    c = bed.cluster
    store = bed.run()
    five, ten, _twenty = bed.ready("r", 5, 10, 20)
    bed.plan.set(*(Fault(f"slow-{op}", op, error=None, delay_s=0.3) for op in OPS))
    fresh = store / ".tmp.step-0000000040.attempt-0.inprogress"
    stale = store / ".tmp.step-0000000050.attempt-0.abandoned"
    for tmp in (fresh, stale):
        tmp.mkdir()
        (tmp / "model.bin").write_bytes(b"x" * 100)
    old = time.time() - 600
    os.utime(stale / "model.bin", (old, old))
    bed.ready("r", 30)  # verified through the slow store
    c.delete(five)
    c.delete(ten)
    time.sleep(0.5)
    bed.operator.kill()  # somewhere in a slow deletion
    bed.operator.start()
    started = time.monotonic()
    c.fail_pod("r", 0)
    c.wait_pod("r", 1)
    restart_s = time.monotonic() - started
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:  # a save still writing: touched, never swept
        (fresh / "model.bin").write_bytes(b"y" * 100)
        assert fresh.exists(), "the sweep removed a temporary a save is writing"
        time.sleep(0.5)
    wait_for(lambda: not stale.exists(), 20, "the abandoned temporary to be swept")
    assert fresh.exists()
    assert restart_s < 5, f"a slow store delayed a restart: {restart_s:.1f} s"
    wait_for(lambda: c.checkpoint(five) is None and c.checkpoint(ten) is None, 60, "deletions")
    bed.plan.set()
    bed.judged()


def _chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} is not possible here: {done.stderr.decode().strip()}")


def test_a_read_only_store_root_fails_saves_and_deletions_visibly(bed: Bed) -> None:
    """Real permissions (an immutable store root; root ignores mode bits): a save fails and
    commits nothing; a deletion fails with DeleteFailed until the root is writable again;
    the resume target stays whole."""
    if os.geteuid() != 0:
        pytest.skip("making a directory immutable needs root (chattr +i)")
    c = bed.cluster
    store = bed.run()
    ten, _twenty = bed.ready("r", 10, 20)
    before = committed_entries(store)
    _chattr("+i", store)
    try:
        with pytest.raises(PermissionError):
            write_checkpoint(store, "r", 30, 0)
        assert committed_entries(store) == before
        assert [p.name for p in store.iterdir() if p.name.startswith(".tmp.")] == []
        c.delete(ten)
        wait_for(lambda: delete_failed(c, ten).get("status") == "True", 20, "DeleteFailed")
        time.sleep(2)
        assert c.checkpoint(ten) is not None
    finally:
        _chattr("-i", store)
    wait_for(lambda: c.checkpoint(ten) is None, 60, "the deletion to succeed")
    c.fail_pod("r", 0)
    assert env_of(c.wait_pod("r", 1))["CKPT_RESUME_STEP"] == "20"
    bed.judged()


@pytest.fixture
def tiny_fs(bed: Bed) -> Iterator[Path]:
    """A 1 MiB tmpfs as run ``full``'s store (root only; unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount = bed.root / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_fails_saves_cleanly_and_deletions_make_room(
    bed: Bed, tiny_fs: Path
) -> None:
    """Saves of 200 KiB into 1 MiB until ENOSPC: the failing save commits nothing and leaves
    no temporary; everything committed still verifies; the run resumes from the newest;
    deleting old checkpoints makes room for the next save."""
    c = bed.cluster
    bed.observer.watch_store("full", tiny_fs)
    c.create_run(run_body("full", f"file://{tiny_fs}"))
    c.wait_pod("full", 0)
    store = Store.from_uri(f"file://{tiny_fs}")
    payload = b"w" * (200 << 10)
    saved = []
    with pytest.raises(OSError) as full:
        for step in range(10, 200, 10):
            write_checkpoint(store, "full", step, 0, payload=payload)
            saved.append(step)
            c.register("full", step)
    assert full.value.errno == errno.ENOSPC
    assert committed_entries(tiny_fs) == {CheckpointName(s, 0, "dir").path for s in saved}
    assert not [p for p in tiny_fs.iterdir() if p.name.startswith(".tmp.")]
    names = [c.register("full", s) for s in saved]
    for name in names:
        c.wait_checkpoint(name, "Ready")
    c.fail_pod("full", 0)
    assert env_of(c.wait_pod("full", 1))["CKPT_RESUME_STEP"] == str(saved[-1])
    for name in names[:2]:
        c.delete(name)
    wait_for(lambda: all(c.checkpoint(n) is None for n in names[:2]), 30, "room to be made")
    files = {"model.bin": ([memoryview(payload)], len(payload))}
    commit(store, CheckpointName(500, 1, "dir"), files, run="full")
    c.wait_checkpoint(c.register("full", 500, 1), "Ready")
    bed.judged()


def test_a_transient_read_error_does_not_invalidate_a_checkpoint(bed: Bed) -> None:
    """An I/O error is no verdict: a Warning says so, verification backs off, then passes."""
    bed.run()
    bed.plan.set(Fault("read-twice", "open_read", match="step-0000000010.attempt-0/", times=2))
    name = bed.cluster.add_checkpoint("r", bed.root / "r", 10, 0)
    bed.cluster.wait_checkpoint(name, "Ready", timeout=30)
    assert len(bed.plan.injected("read-twice")) == 2

    def unreadable() -> list[str]:
        events = bed.cluster.events_with_reason("Unreadable")
        return [e.message for e in events if "cannot be read" in (e.message or "")]

    wait_for(unreadable, 10, "a Warning saying the files could not be read")
    bed.judged()
