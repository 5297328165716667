"""Multi-node attempts: a gang starts, fails, is torn down and restarts together."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api import names
from ckpt_operator.api.models import TrainingRunSpec, TrainingRunStatus
from ckpt_operator.kube.trainer import build_pod, build_service, hostname
from ckpt_operator.policy.attempts import RunState, Step, next_step
from ckpt_operator.policy.resume import Resume, checkpoint_ref, resume_plan
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod, Failure
from tests.unit.factories import checkpoint as ckpt

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ROOT = "file:///tmp/store"
TEMPLATE: dict[str, Any] = {"spec": {"containers": [{"name": "trainer", "image": "img"}]}}


def spec(nodes: int = 3, **extra: Any) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "template": TEMPLATE,
            "store": {"uri": ROOT},
            "numNodes": nodes,
            "restartPolicy": {"maxRestarts": 5, "backoff": {"initialSeconds": 0, "maxSeconds": 0}},
            **extra,
        }
    )


def worker(
    attempt: int,
    rank: int,
    phase: str = "Running",
    *,
    code: int | None = None,
    at: int = 0,
    terminating: bool = False,
    waiting: str | None = None,
) -> AttemptPod:
    failure = (
        Failure((code,), frozenset({"Error"}), exit_code=code, reason="Error")
        if code
        else Failure(exit_code=code)
    )
    return AttemptPod(
        name=names.attempt_pod_name("r", attempt, rank, 3),
        namespace="ns",
        run="r",
        attempt=attempt,
        owner_uid="uid",
        phase=phase,  # type: ignore[arg-type]
        failure=failure,
        finished_at=T0 + timedelta(seconds=at) if phase in ("Failed", "Succeeded") else None,
        started_at=T0,
        rank=rank,
        terminating=terminating,
        waiting=waiting,
    )


def gang(attempt: int, phase: str = "Running") -> list[AttemptPod]:
    return [worker(attempt, r, phase) for r in range(3)]


def state(
    status: TrainingRunStatus,
    pods: list[AttemptPod],
    checkpoints: list[CheckpointInfo] | None = None,
    now: datetime = T0,
    run_spec: TrainingRunSpec | None = None,
) -> RunState:
    return RunState(
        name="r",
        namespace="ns",
        generation=1,
        spec=run_spec or spec(),
        status=status,
        pods=pods,
        checkpoints=checkpoints or [],
        store_root=ROOT,
        now=now,
    )


def advance(step: Step, pods: list[AttemptPod], **kw: Any) -> Step:
    return next_step(state(step.status, pods, **kw))


def test_a_gang_starts_and_runs_together() -> None:
    s0 = next_step(state(TrainingRunStatus(), []))
    assert (s0.create, s0.ranks) == (0, (0, 1, 2))
    assert s0.status.attempts[0].pod == "r-attempt-0-0"
    half = advance(s0, [worker(0, 0), worker(0, 1), worker(0, 2, "Pending")])
    assert half.status.phase == "Pending" and half.create is None
    running = advance(s0, gang(0))
    assert running.status.phase == "Running" and running.status.attempts[0].phase == "Running"
    done = advance(running, [worker(0, r, "Succeeded", at=r) for r in range(3)])
    assert done.status.phase == "Succeeded"
    assert [w.phase for w in done.status.attempts[0].workers or []] == ["Succeeded"] * 3


def test_first_failed_worker_fails_the_attempt_the_rest_are_torn_down_first() -> None:
    cks = [ckpt(100, 0), ckpt(200, 0)]
    running = advance(next_step(state(TrainingRunStatus(), [])), gang(0))
    pods = [worker(0, 0), worker(0, 1), worker(0, 2, "Failed", code=137)]
    failed = advance(running, pods, checkpoints=cks)
    record = failed.status.attempts[0]
    assert record.phase == "Failed" and record.exit_code == 137
    assert record.pod == "r-attempt-0-2"
    assert [(w.rank, w.phase, w.exit_code) for w in record.workers or []] == [
        (0, "Running", None),
        (1, "Running", None),
        (2, "Failed", 137),
    ]
    # The next gang waits until the old one is gone: two gangs never hold the GPUs at once.
    assert failed.create is None and failed.status.phase == "BackingOff"
    assert failed.delete == ("r-attempt-0-0", "r-attempt-0-1")
    assert failed.status.restarts == 1 and len(failed.status.attempts) == 1
    terminating = [replace(p, terminating=True) for p in pods[:2]] + pods[2:]
    waiting = advance(failed, terminating, checkpoints=cks)
    assert waiting.create is None and waiting.delete == ()
    assert waiting.status == failed.status
    restarted = advance(failed, pods[2:], checkpoints=cks)
    assert (restarted.create, restarted.ranks) == (1, (0, 1, 2))
    assert restarted.resume.target == checkpoint_ref(ckpt(200, 0), ROOT)
    assert restarted.status.restarts == 1 and restarted.status.attempts[1].attempt == 1


def test_two_workers_failing_at_once_are_both_recorded_the_earliest_decides() -> None:
    running = advance(next_step(state(TrainingRunStatus(), [])), gang(0))
    pods = [worker(0, 0), worker(0, 1, "Failed", code=3, at=5), worker(0, 2, "Failed", code=9)]
    failed = advance(running, pods)
    record = failed.status.attempts[0]
    assert (record.pod, record.exit_code) == ("r-attempt-0-2", 9)
    assert [w.exit_code for w in record.workers or []] == [None, 3, 9]
    assert failed.delete == ("r-attempt-0-0",)
    assert failed.status.restarts == 1


def test_a_worker_stuck_pending_fails_the_attempt_after_the_startup_timeout() -> None:
    timed = spec(startupTimeoutSeconds=60)
    s0 = next_step(state(TrainingRunStatus(), [], run_spec=timed))
    stuck = [worker(0, 0), worker(0, 1), worker(0, 2, "Pending", waiting="Unschedulable: 0/3")]
    early = advance(s0, stuck, run_spec=timed, now=T0 + timedelta(seconds=59))
    assert early.status == s0.status and early.wake_at == T0 + timedelta(seconds=60)
    late = advance(s0, stuck, run_spec=timed, now=T0 + timedelta(seconds=60))
    record = late.status.attempts[0]
    assert record.reason == "StartupTimeout"
    assert "r-attempt-0-2: Unschedulable: 0/3" in (record.message or "")
    assert set(late.delete) == {p.name for p in stuck}
    never = advance(s0, stuck, now=T0 + timedelta(days=1))  # no timeout set: it waits
    assert never.status == s0.status and never.wake_at is None


def test_a_failed_run_leaves_no_half_gang_running() -> None:
    fail_run = spec(restartPolicy={"rules": [{"action": "FailRun", "onReasons": ["Error"]}]})
    running = advance(next_step(state(TrainingRunStatus(), [], run_spec=fail_run)), gang(0))
    pods = [worker(0, 0), worker(0, 1, "Failed", code=1), worker(0, 2)]
    failed = advance(running, pods, run_spec=fail_run)
    assert failed.status.phase == "Failed"
    assert failed.delete == ("r-attempt-0-0", "r-attempt-0-2")
    again = advance(failed, pods, run_spec=fail_run)  # until they are gone
    assert again.delete == failed.delete and again.status == failed.status


def test_missing_workers_of_a_partly_created_gang_get_its_resume_point() -> None:
    """Crash after creating rank 0 only; a newer checkpoint is Ready now. The other ranks
    must resume where rank 0 does: all workers of an attempt restore the same checkpoint."""
    old = Resume.from_plan(resume_plan([ckpt(100, 0)]), ROOT)
    s1 = next_step(state(TrainingRunStatus(), [], checkpoints=[ckpt(100, 0)]))
    rank0 = replace(
        worker(0, 0, "Pending"), resumed_from=old.target, resume_candidates=old.candidates
    )
    later = advance(s1, [rank0], checkpoints=[ckpt(100, 0), ckpt(200, 0)])
    assert (later.create, later.ranks, later.resume) == (0, (1, 2), old)
    # Same when the write recording the attempt was lost too: rank 0 is adopted.
    lost = next_step(state(TrainingRunStatus(), [rank0], checkpoints=[ckpt(200, 0)]))
    assert lost.status.attempts[0].resumed_from == old.target
    assert (lost.create, lost.ranks, lost.resume) == (0, (1, 2), old)


def test_a_worker_deleted_after_the_gang_ran_fails_the_attempt() -> None:
    running = advance(next_step(state(TrainingRunStatus(), [])), gang(0))
    gone = advance(running, [worker(0, 0), worker(0, 2)])
    assert gone.status.attempts[0].reason == "PodDeleted"
    assert gone.status.attempts[0].pod == "r-attempt-0-1"
    assert [w.phase for w in gone.status.attempts[0].workers or []][1] == "Missing"


def test_gang_pods_get_the_torchrun_environment_and_the_service() -> None:
    resume = Resume.from_plan(resume_plan([ckpt(100, 0)]), ROOT)
    template = {
        "metadata": {"labels": {"kueue.x-k8s.io/queue-name": "gpu"}},
        "spec": {
            "schedulerName": "volcano",
            "containers": [
                {"name": "t", "image": "i", "env": [{"name": "MASTER_PORT", "value": "1"}]}
            ],
        },
    }
    body = build_pod(
        run="r",
        namespace="ns",
        run_uid="u",
        template=template,
        attempt=4,
        store_root=ROOT,
        resume=resume,
        rank=2,
        num_nodes=3,
        master_port=23456,
    )
    meta, pod_spec = body["metadata"], body["spec"]
    assert meta["name"] == "r-attempt-4-2"
    assert meta["labels"][names.LABEL_NODE_RANK] == "2"
    assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == "r-attempt-4"
    assert meta["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "3"
    assert (pod_spec["hostname"], pod_spec["subdomain"]) == ("r-attempt-4-2", "r")
    assert pod_spec["schedulerName"] == "volcano"  # the template passes through
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env["PET_NNODES"] == "3" and env["PET_NODE_RANK"] == "2"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "r-attempt-4-0.r.ns.svc"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "23456"
    assert env["CKPT_RESUME_FROM"] == resume.target.uri  # type: ignore[union-attr]
    service = build_service(run="r", namespace="ns", run_uid="u")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {names.LABEL_RUN: "r"}
    long = "x" * 60 + "-attempt-12-3"
    assert len(hostname(long)) == 63 and hostname(long) != hostname(long[:-1] + "4")


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_gang_histories_never_run_two_gangs(seed: int) -> None:
    """Workers fail, stop and vanish at random and decisions are lost to crashes: at no point
    are workers of two attempts alive, no worker is created twice, counters match history."""
    rng = random.Random(seed)
    run_spec = spec(restartPolicy={"maxRestarts": 50, "backoff": {"initialSeconds": 0}})
    status = TrainingRunStatus()
    pods: dict[str, AttemptPod] = {}
    failures = 0
    for _ in range(60):
        step = next_step(state(status, list(pods.values()), run_spec=run_spec))
        crash = rng.random() < 0.2
        if not crash or rng.random() < 0.5:
            status = step.status
        for name in step.delete:
            pods[name] = replace(pods[name], terminating=True)
        if step.create is not None and not (crash and rng.random() < 0.5):
            for rank in step.ranks:
                name = names.attempt_pod_name("r", step.create, rank, 3)
                assert name not in pods, "a worker that exists is never created again"
                pods[name] = replace(
                    worker(step.create, rank, "Pending"),
                    resumed_from=step.resume.target,
                    resume_candidates=step.resume.candidates,
                )
        alive = {p.attempt for p in pods.values() if p.live}
        assert len(alive) <= 1, f"two gangs alive: {sorted(alive)}"
        # The world moves: terminating pods go, pending ones run, a running one may fail.
        for name, p in list(pods.items()):
            if p.terminating and rng.random() < 0.5:
                del pods[name]
            elif p.phase == "Pending" and rng.random() < 0.7:
                pods[name] = replace(p, phase="Running")
            elif p.phase == "Running" and not p.terminating and rng.random() < 0.05:
                pods[name] = replace(p, phase="Failed", failure=Failure((1,), exit_code=1))
                failures += 1
    counted = sum(1 for a in status.attempts if a.phase == "Failed")
    assert status.restarts == counted
    assert counted <= failures
    assert [a.attempt for a in status.attempts] == list(range(len(status.attempts)))
