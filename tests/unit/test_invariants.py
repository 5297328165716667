"""The invariant checker on synthetic histories: each rule fires when broken and only then."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.testing import convergence
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.history import (
    ATOMIC_COMMIT,
    CHECKPOINTS,
    COMMITTED,
    CONFINED_PATHS,
    CRASH_CONVERGENCE,
    GONE,
    NEWEST_RESUME,
    PODS,
    RUNS,
    SAFE_DELETION,
    STORE,
    VERIFIED_RESUME,
    Record,
)
from ckpt_operator.testing.invariants import InvariantChecker
from ckpt_operator.testing.observer import torn

ROOT = "file:///tmp/allowed/r"
T0 = 1_900_000_000.0


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class History:
    """Builds a history one revision at a time, 0.1 s apart unless told otherwise."""

    def __init__(self, lag_s: float = 2.0) -> None:
        self.checker = InvariantChecker(lag_s=lag_s)
        self.rev, self.t = 0, T0
        self.records: list[Record] = []

    def emit(
        self, kind: str, body: dict[str, Any], type_: str = "MODIFIED", dt: float = 0.1
    ) -> None:
        self.rev += 1
        self.t += dt
        if kind != STORE:
            body["metadata"]["resourceVersion"] = str(self.rev)
        record = Record(self.rev, kind, type_, body, self.t, self.rev)
        self.records.append(record)
        self.checker.feed(record)

    def store(self, type_: str, step: int, attempt: int = 0, dt: float = 0.1) -> None:
        entry = layout.CheckpointName(step, attempt, "dir").path
        self.emit(STORE, {"run": "r", "entry": entry, "metadata": {"name": entry}}, type_, dt)

    def invariants(self) -> list[str]:
        return [v.invariant for v in self.checker.violations]


def run(
    *attempts: dict[str, Any], deleting: bool = False, timeout: int = 600, **status: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r", "uid": "run-uid", "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = stamp(T0)
    last = {"attempt": attempts[-1]["attempt"]} if attempts else {}
    return {
        "metadata": meta,
        "spec": {"consumers": {"reportTimeoutSeconds": timeout}},
        "status": {"attempts": list(attempts), **last, "observedGeneration": 1, **status},
    }


def record(
    attempt: int, phase: str = "Pending", resume: int | None = None, **extra: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {"attempt": attempt, "phase": phase, "pod": f"r-attempt-{attempt}"}
    if resume is not None:
        found["resumedFrom"] = {
            "name": names.checkpoint_object_name("r", resume, 0),
            "step": resume,
        }
    return {**found, **extra}


def ckpt(
    step: int,
    phase: str = "Ready",
    *,
    deleting: bool = False,
    force: bool = False,
    finalizer: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": names.checkpoint_object_name("r", step, 0),
        "uid": f"ckpt-{step}",
        "finalizers": [names.FINALIZER] if finalizer else [],
        "annotations": {names.ANNOTATION_FORCE_DELETE: "true"} if force else {},
    }
    if deleting:
        meta["deletionTimestamp"] = stamp(T0)
    verified = [{"type": "Verified", "status": "True"}] if phase in ("Ready", "Deleting") else []
    return {
        "metadata": meta,
        "spec": {
            "run": "r",
            "step": step,
            "attempt": 0,
            "path": layout.CheckpointName(step, 0, "dir").path,
        },
        "status": {"phase": phase, "conditions": verified},
    }


def worker(
    attempt: int,
    phase: str = "Pending",
    resume: int | None = None,
    rank: int = 0,
    gang: int = 1,
    uid: str = "",
) -> dict[str, Any]:
    uri = f"{ROOT}/{layout.CheckpointName(resume, 0, 'dir').path}" if resume is not None else ""
    name = names.attempt_pod_name("r", attempt, rank, gang)
    labels = {
        names.LABEL_RUN: "r",
        names.LABEL_ATTEMPT: str(attempt),
        names.LABEL_NODE_RANK: str(rank),
    }
    return {
        "metadata": {"name": name, "uid": uid or f"{name}-uid", "labels": labels},
        "spec": {
            "containers": [{"name": "t", "env": [{"name": names.ENV_RESUME_FROM, "value": uri}]}]
        },
        "status": {"phase": phase},
    }


def consumer(loaded: int | None, reported: float) -> dict[str, Any]:
    annotations = {} if loaded is None else {names.ANNOTATION_LOADED_STEP: str(loaded)}
    fields = {"f:metadata": {"f:annotations": {f"f:{names.ANNOTATION_LOADED_STEP}": {}}}}
    return {
        "metadata": {
            "name": "infer",
            "uid": "infer-uid",
            "labels": {names.LABEL_CONSUMER_OF: "r"},
            "annotations": annotations,
            "creationTimestamp": stamp(T0),
            "managedFields": [{"manager": "c", "time": stamp(reported), "fieldsV1": fields}],
        },
        "status": {"phase": "Pending"},
    }


def released(h: History, step: int) -> None:
    """Our finalizer lets go: the object vanishes."""
    h.emit(CHECKPOINTS, ckpt(step, "Deleting", deleting=True, finalizer=False), "DELETED")


@pytest.fixture
def h() -> History:
    history = History()
    history.emit(RUNS, run(record(0)), "ADDED")
    history.emit(PODS, worker(0), "ADDED")
    for step in (5, 6):
        history.emit(CHECKPOINTS, ckpt(step), "ADDED")
    return history


def test_a_deletion_blocked_by_a_consumer_throughout_is_unsafe(h: History) -> None:
    h.emit(PODS, consumer(5, T0), "ADDED")
    h.emit(CHECKPOINTS, ckpt(5, deleting=True))
    released(h, 5)
    assert h.invariants() == [SAFE_DELETION]
    assert "consumer infer loaded 5" in h.checker.violations[0].message


def test_one_free_revision_in_the_window_acquits(h: History) -> None:
    h.emit(PODS, consumer(5, T0), "ADDED")
    h.emit(CHECKPOINTS, ckpt(5, deleting=True))
    h.emit(PODS, consumer(6, T0))  # the operator may have decided now
    h.emit(PODS, consumer(3, T0))  # a consumer going back later does not convict it
    released(h, 5)
    h.store(GONE, 5)
    assert h.invariants() == []


def test_forced_deletions_and_silent_consumers_do_not_block(h: History) -> None:
    h.emit(PODS, consumer(1, T0 - 700), "ADDED")  # silent past reportTimeoutSeconds
    h.emit(CHECKPOINTS, ckpt(5, deleting=True))
    released(h, 5)
    h.emit(CHECKPOINTS, ckpt(6, deleting=True, force=True))  # now the newest, forced
    released(h, 6)
    assert h.invariants() == []


def test_the_newest_verified_and_a_resume_target_are_protected_until_the_run_goes(
    h: History,
) -> None:
    h.emit(RUNS, run(record(0, "Failed"), record(1, resume=5)))
    h.emit(CHECKPOINTS, ckpt(5, deleting=True))
    h.emit(CHECKPOINTS, ckpt(6, deleting=True))
    released(h, 5)
    released(h, 6)
    messages = [v.message for v in h.checker.violations]
    assert h.invariants() == [SAFE_DELETION, SAFE_DELETION]
    assert "resume target" in messages[0] and "newest verified" in messages[1]
    h2 = History()
    h2.emit(RUNS, run(record(0, resume=5)), "ADDED")
    h2.emit(CHECKPOINTS, ckpt(5, deleting=True), "ADDED")
    h2.emit(RUNS, run(record(0, resume=5), deleting=True))
    released(h2, 5)
    assert h2.invariants() == []


def test_a_live_pod_whose_status_write_was_lost_protects_its_resume_point(h: History) -> None:
    h.emit(PODS, worker(0, "Failed"))
    h.emit(PODS, worker(1, resume=5), "ADDED")  # created; the status write recording it lost
    h.emit(CHECKPOINTS, ckpt(5, deleting=True))
    h.store(GONE, 5)
    assert h.invariants() == [SAFE_DELETION]
    assert "resume target" in h.checker.violations[0].message


def test_a_deletion_inside_a_watch_gap_is_judged_at_the_gap_end(h: History) -> None:
    h.emit(PODS, consumer(5, T0), "ADDED")
    gone = Record(h.rev + 1, CHECKPOINTS, "DELETED", ckpt(5), h.t + 1, 99, relisted=True)
    h.checker.feed(gone)
    assert h.invariants() == [SAFE_DELETION]
    assert "end of a watch gap" in h.checker.violations[0].message
    assert h.checker.unjudged == ["deletion of r-step-5-a0 fell into a watch gap"]
    h.emit(PODS, consumer(7, T0))
    h.emit(CHECKPOINTS, ckpt(6, force=True))  # the newest now, but forced
    h.checker.feed(Record(h.rev + 1, CHECKPOINTS, "DELETED", ckpt(6), h.t + 1, 99, relisted=True))
    assert len(h.checker.violations) == 1


def test_storage_gone_in_a_watch_gap_waits_for_the_relist(h: History) -> None:
    entry = layout.CheckpointName(5, 0, "dir").path
    body = {"run": "r", "entry": entry, "metadata": {"name": entry}}
    h.checker.feed(Record(h.rev + 1, STORE, GONE, body, h.t, 90, relisted=True))
    h.checker.feed(
        Record(h.rev + 2, CHECKPOINTS, "MODIFIED", ckpt(5, deleting=True), h.t, 91, True)
    )
    assert h.invariants() == []
    assert "seen only after its storage went" in h.checker.unjudged[-1]
    entry = layout.CheckpointName(6, 0, "dir").path
    body = {"run": "r", "entry": entry, "metadata": {"name": entry}}
    h.checker.feed(Record(h.rev + 3, STORE, GONE, body, h.t, 92, relisted=True))
    h.emit(CHECKPOINTS, ckpt(6))  # the watch streams again: not being deleted
    assert h.invariants() == [SAFE_DELETION]


def test_storage_vanishing_without_a_deletion(h: History) -> None:
    h.store(COMMITTED, 5)
    h.store(GONE, 5)
    h.store(COMMITTED, 9)  # never registered
    h.store(GONE, 9)
    assert h.invariants() == [SAFE_DELETION, SAFE_DELETION]
    h.emit(RUNS, run(record(0), deleting=True))
    h.store(COMMITTED, 10)
    h.store(GONE, 10)  # run deletion sweeps unregistered entries
    assert len(h.checker.violations) == 2


def test_attempt_pods_are_created_once_in_order_and_never_overlap(h: History) -> None:
    h.emit(PODS, worker(0, "Failed"))
    h.emit(PODS, worker(2), "ADDED")  # attempt 1 skipped
    h.emit(PODS, worker(0, "Failed", uid="again"), "ADDED")  # an old attempt's pod again
    assert h.invariants() == [CRASH_CONVERGENCE, CRASH_CONVERGENCE, CRASH_CONVERGENCE]
    g = History()
    g.emit(RUNS, run(record(0)), "ADDED")
    for rank in range(2):
        g.emit(PODS, worker(0, "Running", rank=rank, gang=2), "ADDED")
    g.emit(PODS, worker(0, "Failed", rank=1, gang=2))
    g.emit(PODS, worker(1, rank=0, gang=2), "ADDED")  # rank 0 of attempt 0 still runs
    assert g.invariants() == [CRASH_CONVERGENCE]
    assert "(0, 1) alive at once" in g.checker.violations[0].message


def test_resume_points_must_be_ready_not_terminating_and_the_newest(h: History) -> None:
    h.emit(PODS, worker(0, "Failed"))
    h.emit(CHECKPOINTS, ckpt(7, "Invalid"), "ADDED", dt=5)
    h.emit(PODS, worker(1, resume=7), "ADDED")
    assert h.invariants() == [VERIFIED_RESUME]
    lagging = History()
    lagging.emit(RUNS, run(record(0)), "ADDED")
    lagging.emit(CHECKPOINTS, ckpt(5), "ADDED", dt=10)
    lagging.emit(CHECKPOINTS, ckpt(6), "ADDED", dt=10)
    lagging.emit(CHECKPOINTS, ckpt(6, deleting=True, force=True), dt=10)
    lagging.emit(CHECKPOINTS, ckpt(7), "ADDED", dt=0.5)
    lagging.emit(PODS, worker(0, resume=6), "ADDED", dt=1)  # 6 went 1 s ago, 7 came 1 s ago
    assert lagging.invariants() == []
    lagging.emit(PODS, worker(0, "Failed", resume=6))
    lagging.emit(PODS, worker(1, resume=6), "ADDED", dt=5)  # 6 long Terminating, 7 long Ready
    assert lagging.invariants() == [VERIFIED_RESUME, NEWEST_RESUME]
    scratch = History()
    scratch.emit(RUNS, run(), "ADDED")
    scratch.emit(CHECKPOINTS, ckpt(5), "ADDED")
    scratch.store(GONE, 5)
    scratch.emit(PODS, worker(0, resume=5), "ADDED", dt=5)
    assert scratch.invariants() == [SAFE_DELETION, VERIFIED_RESUME]
    assert "storage gone" in scratch.checker.violations[1].message


def test_status_records_and_counters_only_move_forward(h: History) -> None:
    closed = record(0, "Failed", action="Retry", exitCode=1)
    h.emit(RUNS, run(closed, record(1), restarts=1))
    ignored = record(0, "Failed", action="Ignore", exitCode=1)
    h.emit(RUNS, run(ignored, record(1), restarts=0))
    h.emit(RUNS, run(ignored))
    h.emit(RUNS, run(ignored, record(2)))
    found = [v.message for v in h.checker.violations]
    assert found == [
        "closed attempt 0 changed",
        "status.restarts decreased",
        "status.attempts shrank to 1",
        "attempts [0, 2], attempt 2",
    ]


def test_store_records_follow_the_events_of_their_revision_and_order_decides() -> None:
    early = Record(7, STORE, GONE, {}, 0.0, 1)
    late = Record(7, PODS, "MODIFIED", {}, 9.0, 2)
    assert sorted([early, late], key=lambda r: r.order) == [late, early]
    base = History()
    base.emit(RUNS, run(record(0)), "ADDED")
    base.emit(PODS, consumer(5, T0), "ADDED")
    base.emit(CHECKPOINTS, ckpt(5), "ADDED")
    base.emit(CHECKPOINTS, ckpt(6), "ADDED")
    base.emit(CHECKPOINTS, ckpt(5, deleting=True))
    base.emit(PODS, consumer(6, T0))
    base.store(GONE, 5)
    shuffled = list(base.records)
    random.Random(3).shuffle(shuffled)
    replay = InvariantChecker(lag_s=2.0)
    for rec in sorted(shuffled, key=lambda r: r.order):
        replay.feed(rec)
    assert replay.violations == base.checker.violations == []


def test_a_changed_canary_is_a_confined_paths_violation() -> None:
    checker = InvariantChecker()
    checker.feed(Record(3, "canary", "CHANGED", {"run": "/outside", "entry": ""}, T0))
    assert [v.invariant for v in checker.violations] == [CONFINED_PATHS]


def test_a_committed_entry_that_does_not_verify_breaks_atomic_commit(tmp_path: Path) -> None:
    whole = write_checkpoint(tmp_path, "r", 5)
    assert torn("r", tmp_path, 1) == []
    (tmp_path / write_checkpoint(tmp_path, "r", 6) / "model.bin").write_bytes(b"half")
    found = torn("r", tmp_path, 1)
    assert [v.invariant for v in found] == [ATOMIC_COMMIT]
    assert "step-0000000006" in found[0].message and whole not in found[0].message


def test_convergence_lists_what_the_operator_still_owes(h: History) -> None:
    assert convergence.problems(h.checker) == [
        "run r: latestCheckpoint None, newest Ready is r-step-6-a0",
    ]
    h.emit(PODS, worker(0, "Failed"))
    h.emit(CHECKPOINTS, ckpt(5, deleting=True, force=True))
    h.store(COMMITTED, 8)
    owed = convergence.problems(h.checker, {"r": {0: "Retry"}})
    assert owed == [
        "run r: attempt 0 ended, status says Pending",
        "run r: latestCheckpoint None, newest Ready is r-step-6-a0",
        "run r: attempt 0 recorded as {'attempt': 0, 'phase': 'Pending', 'pod': 'r-attempt-0'}, "
        "expected Retry",
        "run r: restarts, preemptions, attempts (0, 0, 1), injected (1, 0, 2)",
        "checkpoint r-step-5-a0 still Terminating though nothing blocks it",
        "store entry r/step-0000000008.attempt-0 has no Checkpoint",
    ]
    latest = {"name": "r-step-8-a0", "step": 8}
    done = run(
        record(0, "Failed", action="Retry"),
        record(1, resume=6),
        restarts=1,
        latestCheckpoint=latest,
    )
    h.emit(RUNS, done)
    h.emit(PODS, worker(1, resume=6), "ADDED")
    released(h, 5)
    h.emit(CHECKPOINTS, ckpt(8), "ADDED")
    assert convergence.problems(h.checker, {"r": {0: "Retry"}}) == []
    assert convergence.leftovers(h.checker) == [
        "trainingruns r remains (finalizers None)",
        "checkpoints r-step-6-a0 remains (finalizers ['ckpt.dev/storage-protection'])",
        "checkpoints r-step-8-a0 remains (finalizers ['ckpt.dev/storage-protection'])",
        "store entry r/step-0000000008.attempt-0 remains",
    ]
