"""Attached runs: how admitted pods are grouped into attempts, and how status follows them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api.models import TrainingRunStatus
from ckpt_operator.policy.observed import (
    JOBSET_RESTART_ATTEMPT,
    NO_POD_GRACE,
    admit,
    attempt_key,
    observe,
)
from ckpt_operator.policy.resume import Resume
from ckpt_operator.views.pod import AttemptPod, Failure
from ckpt_operator.views.workload import AdmittedPod
from tests.unit.factories import checkpoint as ckpt

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ROOT = "file:///tmp/store"


def new_pod(index: int | None = 0, owner: str = "job-1", **labels: str) -> AdmittedPod:
    return AdmittedPod(
        run="r",
        namespace="ns",
        generate_name=f"train-{index}-",
        labels={"ckpt.dev/run": "r", **labels},
        owner_uid=owner,
        completion_index=index,
    )


def pod(
    name: str, attempt: int, phase: Any = "Running", index: int | None = 0, owner: str = "job-1"
) -> AttemptPod:
    failure = (
        Failure(exit_codes=(1,), exit_code=1, reason="Error") if phase == "Failed" else Failure()
    )
    done = T0 + timedelta(seconds=attempt) if phase in ("Failed", "Succeeded") else None
    return AttemptPod(
        name=name,
        namespace="ns",
        run="r",
        attempt=attempt,
        owner_uid=owner,
        phase=phase,
        failure=failure,
        finished_at=done,
        completion_index=index,
    )


def admitted(status: TrainingRunStatus, key: str, checkpoints: Any = (), now: datetime = T0) -> Any:
    return admit(status, key, new_pod(), checkpoints, ROOT, now)


# --- keys -------------------------------------------------------------------------------------


def test_a_jobs_first_pods_share_a_key_and_each_replacement_gets_its_own() -> None:
    first = [attempt_key(new_pod(i), [], None) for i in range(4)]
    assert len(set(first)) == 1
    known = [pod(f"p{i}", 0, index=i) for i in range(4)]
    again = attempt_key(new_pod(0), known, None)
    assert again not in first
    later = attempt_key(new_pod(0), [*known, pod("p0b", 1, index=0)], None)
    assert later not in (again, *first)
    assert attempt_key(new_pod(1), known, None) not in (again, later)


def test_a_jobset_restart_is_one_key_whatever_job_or_index_a_pod_is_in() -> None:
    restart1 = [
        attempt_key(new_pod(i, owner=f"job-{j}", **{JOBSET_RESTART_ATTEMPT: "1"}), [], None)
        for i in range(2)
        for j in range(3)
    ]
    assert len(set(restart1)) == 1
    restart2 = attempt_key(new_pod(0, owner="job-9", **{JOBSET_RESTART_ATTEMPT: "2"}), [], None)
    assert restart2 != restart1[0]


def test_an_explicit_attempt_label_groups_pods() -> None:
    a = attempt_key(new_pod(0, owner="x", wave="3"), [], "wave")
    b = attempt_key(new_pod(1, owner="y", wave="3"), [], "wave")
    c = attempt_key(new_pod(1, owner="y", wave="4"), [], "wave")
    assert a == b != c


# --- admission --------------------------------------------------------------------------------


def test_first_pod_opens_attempt_zero_from_scratch() -> None:
    result = admitted(TrainingRunStatus(), "k")
    assert (result.attempt, result.resume, result.opened) == (0, Resume(), True)
    assert result.status is not None
    record = result.status.attempts[0]
    assert (record.attempt, record.key, record.phase, record.pod) == (0, "k", "Pending", "train-0-")


def test_new_attempt_resumes_from_the_newest_ready_checkpoint_of_any_attempt() -> None:
    status = admitted(TrainingRunStatus(), "k0").status
    assert status is not None
    checkpoints = [ckpt(100), ckpt(200), ckpt(300, phase="Pending"), ckpt(250, 1, "Invalid")]
    result = admitted(status, "k1", checkpoints)
    assert result.attempt == 1
    assert result.resume.target is not None and result.resume.target.step == 200
    assert [u.rsplit("/", 1)[-1] for u in result.resume.candidates] == [
        "step-0000000200.attempt-0",
        "step-0000000100.attempt-0",
    ]


def test_pods_with_the_key_of_an_open_attempt_join_it_with_its_resume_point() -> None:
    status = admitted(TrainingRunStatus(), "k0", [ckpt(100)]).status
    assert status is not None
    # A newer checkpoint became Ready between two pods of the same gang restart.
    joined = admitted(status, "k0", [ckpt(100), ckpt(200)])
    assert (joined.attempt, joined.opened) == (0, False)
    assert joined.resume.target is not None and joined.resume.target.step == 100
    assert len(joined.resume.candidates) == 1


def test_attempt_numbers_are_never_reused_even_for_a_closed_attempts_key() -> None:
    status = admitted(TrainingRunStatus(), "k0").status
    assert status is not None
    closed = observe(status, [pod("p", 0, "Failed")], [], ROOT, T0).status
    again = admitted(closed, "k0")
    assert (again.attempt, again.opened) == (1, True)


# --- observation ------------------------------------------------------------------------------


def opened(*keys: str, checkpoints: Any = ()) -> TrainingRunStatus:
    status = TrainingRunStatus()
    for key in keys:
        result = admitted(status, key, checkpoints)
        assert result.status is not None
        status = result.status
    return status


def test_no_pods_yet_the_run_waits() -> None:
    found = observe(TrainingRunStatus(), [], [], ROOT, T0).status
    assert found.phase == "Pending"
    assert {c.type: c.reason for c in found.conditions}["Ready"] == "WaitingForPods"


def test_running_pod_makes_the_attempt_and_run_running_with_the_real_pod_name() -> None:
    found = observe(opened("k"), [pod("train-0-abc", 0)], [ckpt(100)], ROOT, T0).status
    assert found.phase == "Running" and found.attempts[0].phase == "Running"
    assert found.attempts[0].pod == "train-0-abc"
    assert found.latest_checkpoint is not None and found.latest_checkpoint.step == 100


def test_first_failure_is_recorded_at_once_and_the_attempt_stays_open_while_pods_live() -> None:
    pods = [pod("a", 0, "Failed", index=0), pod("b", 0, "Running", index=1)]
    found = observe(opened("k"), pods, [], ROOT, T0)
    record = found.status.attempts[0]
    assert (record.phase, record.pod, record.exit_code, record.reason) == (
        "Running",
        "a",
        1,
        "Error",
    )
    assert not found.notes
    # The workload controller deletes the failed pod: what it left behind stays recorded.
    later = observe(found.status, [pod("b", 0, "Failed", index=1)], [], ROOT, T0)
    record = later.status.attempts[0]
    assert (record.phase, record.pod, record.exit_code) == ("Failed", "a", 1)
    assert later.status.phase == "Failed"
    assert [n.reason for n in later.notes] == ["AttemptFailed"]
    conditions = {c.type: (c.status, c.reason) for c in later.status.conditions}
    assert conditions["Progressing"] == ("Unknown", "WaitingForWorkload")


def test_all_pods_succeeded_closes_the_attempt_and_the_run_succeeds() -> None:
    pods = [pod("a", 0, "Succeeded", index=0), pod("b", 0, "Succeeded", index=1)]
    found = observe(opened("k"), pods, [], ROOT, T0).status
    record = found.attempts[0]
    assert (record.phase, record.exit_code, found.phase) == ("Succeeded", 0, "Succeeded")
    assert [w.pod for w in record.workers or []] == ["a", "b"]


def test_pods_gone_before_an_outcome_fail_the_attempt_as_deleted() -> None:
    running = observe(opened("k"), [pod("a", 0)], [], ROOT, T0).status
    found = observe(running, [], [], ROOT, T0).status
    assert (found.attempts[0].phase, found.attempts[0].reason) == ("Failed", "PodDeleted")


def test_an_attempt_whose_pods_never_appear_closes_after_the_grace() -> None:
    status = opened("k")
    early = observe(status, [], [], ROOT, T0 + timedelta(seconds=5))
    assert early.status.attempts[0].phase == "Pending"
    assert early.wake_at == T0 + NO_POD_GRACE
    late = observe(status, [], [], ROOT, T0 + NO_POD_GRACE + timedelta(seconds=1)).status
    assert late.attempts[0].phase == "Failed"


def test_an_open_older_attempt_keeps_the_run_running_after_a_newer_one_failed() -> None:
    status = opened("k0", "k1")
    pods = [pod("a", 0, "Running", index=1), pod("b", 1, "Failed", index=0)]
    found = observe(status, pods, [], ROOT, T0).status
    assert [a.phase for a in found.attempts] == ["Running", "Failed"]
    assert (found.phase, found.attempt, found.restarts) == ("Running", 1, 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_histories_never_reuse_a_number_and_joiners_share_the_resume(seed: int) -> None:
    """Pods of random keys are admitted while checkpoints turn Ready and pods fail: every
    attempt number is opened once, and every pod of an attempt gets the same resume point."""
    rng = random.Random(seed)
    status, pods, checkpoints = TrainingRunStatus(), list[AttemptPod](), list[Any]()
    told: dict[int, set[tuple[str, ...]]] = {}
    for step in range(40):
        roll = rng.random()
        if roll < 0.4:
            key = f"k{rng.randint(0, 5)}"
            result = admit(status, key, new_pod(), checkpoints, ROOT, T0)
            status = result.status or status
            told.setdefault(result.attempt, set()).add(result.resume.candidates[:1])
            pods.append(pod(f"p{step}", result.attempt))
        elif roll < 0.6:
            checkpoints.append(ckpt(100 * (step + 1)))
        elif pods:
            victim = rng.randrange(len(pods))
            old = pods[victim]
            pods[victim] = pod(old.name, old.attempt, rng.choice(["Failed", "Succeeded"]))
        status = observe(status, pods, checkpoints, ROOT, T0).status
        numbers = [a.attempt for a in status.attempts]
        assert numbers == sorted(set(numbers))
    assert all(len(targets) == 1 for targets in told.values())
