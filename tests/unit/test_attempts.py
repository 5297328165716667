"""The attempt state machine and the trainer pod, without a cluster."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api import names
from ckpt_operator.api.models import TrainingRunSpec, TrainingRunStatus
from ckpt_operator.kube.trainer import build_pod, validate_template
from ckpt_operator.policy.attempts import RunState, Step, next_step, own_pods
from ckpt_operator.policy.resume import Resume, checkpoint_ref, resume_plan, resume_target
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod, Failure, failure_of
from tests.unit.factories import checkpoint as ckpt

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ROOT = "file:///tmp/store"
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml", names.LABEL_RUN: "spoofed"}, "annotations": {"a": "b"}},
    "spec": {
        "restartPolicy": "Always",
        "containers": [
            {
                "name": "trainer",
                "image": "img",
                "env": [{"name": "CKPT_STORE", "value": "nope"}, {"name": "LR", "value": "0.1"}],
            },
            {"name": "sidecar", "image": "img"},
        ],
    },
}


def spec(**policy: Any) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {"template": TEMPLATE, "store": {"uri": ROOT}, "restartPolicy": policy}
    )


def pod(attempt: int, phase: str = "Pending", failure: Failure | None = None) -> AttemptPod:
    return AttemptPod(
        name=f"r-attempt-{attempt}",
        namespace="ns",
        run="r",
        attempt=attempt,
        owner_uid="uid",
        phase=phase,  # type: ignore[arg-type]
        failure=failure or Failure(),
    )


def state(
    status: TrainingRunStatus,
    pods: dict[int, AttemptPod] | None = None,
    checkpoints: list[CheckpointInfo] | None = None,
    now: datetime = T0,
    run_spec: TrainingRunSpec | None = None,
    invalid: tuple[str, str] | None = None,
) -> RunState:
    return RunState(
        name="r",
        namespace="ns",
        generation=1,
        spec=run_spec or spec(maxRestarts=3, backoff={"initialSeconds": 0, "maxSeconds": 0}),
        status=status,
        pods=list((pods or {}).values()),
        checkpoints=checkpoints or [],
        store_root=ROOT,
        now=now,
        invalid=invalid,
    )


def cond(step: Step, type_: str) -> tuple[str, str]:
    c = next(c for c in step.status.conditions if c.type == type_)
    return c.status, c.reason


# --- the pod ----------------------------------------------------------------------------------


def test_build_pod() -> None:
    plan = resume_plan([ckpt(100, 0), ckpt(200, 0), ckpt(300, 1, "Invalid")])
    body = build_pod(
        run="r",
        namespace="ns",
        run_uid="uid",
        template=TEMPLATE,
        attempt=2,
        store_root=ROOT,
        resume=Resume.from_plan(plan, ROOT),
    )
    meta = body["metadata"]
    assert meta["name"] == "r-attempt-2"
    assert meta["labels"] == {
        "team": "ml",
        names.LABEL_RUN: "r",
        names.LABEL_ATTEMPT: "2",
        names.LABEL_NODE_RANK: "0",
    }
    assert meta["annotations"]["a"] == "b"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "ckpt.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "r",
            "uid": "uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert body["spec"]["restartPolicy"] == "Never"
    env = body["spec"]["containers"][0]["env"]
    values = {e["name"]: e.get("value") for e in env}
    uri200 = f"{ROOT}/step-0000000200.attempt-0"
    assert values["CKPT_RESUME_FROM"] == uri200
    assert values["CKPT_RESUME_STEP"] == "200"
    assert json.loads(values["CKPT_RESUME_CANDIDATES"]) == [
        uri200,
        f"{ROOT}/step-0000000100.attempt-0",
    ]
    assert values["CKPT_STORE"] == ROOT  # ours wins over the template's
    assert values["LR"] == "0.1"
    assert [e["name"] for e in env].index("LR") > [e["name"] for e in env].index("CKPT_STORE")
    assert values["CKPT_ATTEMPT"] == "2" and values["CKPT_RUN"] == "r"
    assert values["CKPT_NAMESPACE"] == "ns"
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert "env" not in body["spec"]["containers"][1]
    assert TEMPLATE["spec"]["restartPolicy"] == "Always"  # the template is not mutated
    assert len(TEMPLATE["spec"]["containers"][0]["env"]) == 2


def test_build_pod_from_scratch() -> None:
    body = build_pod(
        run="r",
        namespace="ns",
        run_uid="u",
        template=TEMPLATE,
        attempt=0,
        store_root=ROOT,
        resume=Resume(),
    )
    values = {e["name"]: e.get("value") for e in body["spec"]["containers"][0]["env"]}
    assert (values["CKPT_RESUME_FROM"], values["CKPT_RESUME_STEP"]) == ("", "")
    assert values["CKPT_RESUME_CANDIDATES"] == "[]"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({"spec": {"containers": [{"name": "a", "image": "i"}]}}, None),
        ({}, "template.spec"),
        ({"spec": {"containers": []}}, "at least one"),
        ({"spec": {"containers": [{"image": "i"}]}}, "name is required"),
        ({"spec": {"containers": [{"name": "a"}]}}, "image is required"),
        ({"spec": {"containers": [{"name": "a", "image": "i"}] * 2}}, "used twice"),
        ({"spec": {"containers": [{"name": "a", "image": "i", "env": {"A": 1}}]}}, "env"),
        ({"spec": {"containers": ["x"]}}, "must be an object"),
    ],
)
def test_validate_template(template: dict[str, Any], problem: str | None) -> None:
    found = validate_template(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_failure_of_a_preempted_oom_pod() -> None:
    status = {
        "phase": "Failed",
        "reason": "Preempted",
        "message": "preempted by a higher priority pod",
        "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
        ],
        "initContainerStatuses": [{"name": "init", "state": {"terminated": {"exitCode": 0}}}],
        "containerStatuses": [
            {"name": "sidecar", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}},
            {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
        ],
    }
    f = failure_of(status, "trainer")
    assert f.exit_code == 137
    assert sorted(f.exit_codes) == [2, 137]
    assert f.reason == "Preempted"
    assert f.reasons == {
        "Preempted",
        "Error",
        "OOMKilled",
        "DisruptionTarget",
        "PreemptionByScheduler",
    }
    assert f.message == "preempted by a higher priority pod"


def test_failure_of_an_empty_status() -> None:
    assert failure_of({}) == Failure()


def test_attempt_pod_from_body() -> None:
    body = {
        "metadata": {
            "name": "r-attempt-3",
            "namespace": "ns",
            "labels": {names.LABEL_RUN: "r", names.LABEL_ATTEMPT: "3"},
            "ownerReferences": [{"uid": "other"}, {"uid": "uid", "controller": True}],
        },
        "spec": {"containers": [{"name": "trainer"}]},
        "status": {
            "phase": "Failed",
            "startTime": "2030-01-01T00:00:00Z",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 1, "finishedAt": "2030-01-01T00:01:00Z"}},
                }
            ],
        },
    }
    p = AttemptPod.from_body(body)
    assert p is not None
    assert (p.run, p.attempt, p.owner_uid, p.phase) == ("r", 3, "uid", "Failed")
    assert p.failure.exit_code == 1
    assert p.started_at == T0 and p.finished_at == T0 + timedelta(minutes=1)
    body["metadata"]["labels"][names.LABEL_ATTEMPT] = "x"
    assert AttemptPod.from_body(body) is None
    body["status"]["phase"] = "Weird"
    body["metadata"]["labels"][names.LABEL_ATTEMPT] = "1"
    assert AttemptPod.from_body(body).phase == "Unknown"  # type: ignore[union-attr]


def test_pods_of_a_namesake_run_are_not_ours() -> None:
    stranger = AttemptPod(name="r-attempt-0", namespace="ns", run="r", attempt=0, owner_uid="old")
    assert own_pods([stranger, pod(1)], "uid") == [pod(1)]


# --- the state machine ------------------------------------------------------------------------


def test_first_step_records_attempt_zero_then_creates_it() -> None:
    step = next_step(state(TrainingRunStatus()))
    assert step.create == 0 and step.resume.target is None
    st_ = step.status
    assert (st_.phase, st_.attempt, st_.restarts, st_.observed_generation) == ("Pending", 0, 0, 1)
    assert st_.attempts[0].pod == "r-attempt-0" and st_.attempts[0].resumed_from is None
    assert cond(step, "Ready") == ("False", "AttemptPending")
    assert cond(step, "Progressing") == ("True", "AttemptStarted")
    assert cond(step, "Failed") == ("False", "NoFailure")
    assert all(c.observed_generation == 1 for c in st_.conditions)
    assert [n.reason for n in step.notes] == ["Started"]


def advance(step: Step, **kw: Any) -> Step:
    return next_step(state(step.status, **kw))


def test_lifecycle_success() -> None:
    s0 = next_step(state(TrainingRunStatus()))
    again = advance(s0, pods={0: pod(0)})
    assert again.status == s0.status and again.create is None and not again.notes
    running = advance(s0, pods={0: pod(0, "Running")})
    assert running.status.phase == "Running" and running.status.attempts[0].phase == "Running"
    done = advance(running, pods={0: pod(0, "Succeeded")})
    assert done.status.phase == "Succeeded"
    assert done.status.attempts[0].exit_code == 0
    assert cond(done, "Ready") == ("True", "Succeeded")
    assert [n.reason for n in done.notes] == ["Succeeded"]
    # Terminal: nothing more happens, whatever the pods do.
    after = advance(done, pods={})
    assert after.status == done.status and after.create is None


def test_failure_restarts_from_newest_checkpoint_in_one_write() -> None:
    s0 = next_step(state(TrainingRunStatus()))
    cks = [ckpt(100, 0), ckpt(200, 0), ckpt(300, 0, "Invalid")]
    s1 = advance(s0, pods={0: pod(0, "Failed", Failure((1,), exit_code=1))}, checkpoints=cks)
    assert s1.create == 1
    assert s1.resume.target == checkpoint_ref(ckpt(200, 0), ROOT)
    st_ = s1.status
    assert (st_.attempt, st_.restarts, st_.phase) == (1, 1, "Pending")
    assert st_.attempts[0].phase == "Failed" and st_.attempts[0].action == "Retry"
    assert st_.attempts[1].resumed_from is not None
    assert st_.attempts[1].resumed_from.step == 200
    assert st_.latest_checkpoint is not None and st_.latest_checkpoint.step == 200
    assert [n.reason for n in s1.notes] == ["AttemptFailed", "Restarted"]
    assert "step 200" in s1.notes[1].message


def test_backoff_waits_then_starts() -> None:
    policy_spec = spec(maxRestarts=3, backoff={"initialSeconds": 5, "maxSeconds": 60})
    s0 = next_step(state(TrainingRunStatus(), run_spec=policy_spec))
    failed = {0: pod(0, "Failed", Failure((1,), exit_code=1))}
    s1 = advance(s0, pods=failed, run_spec=policy_spec)
    assert s1.status.phase == "BackingOff" and s1.create is None
    assert s1.status.next_attempt_after == T0 + timedelta(seconds=5) == s1.wake_at
    early = advance(s1, pods=failed, run_spec=policy_spec, now=T0 + timedelta(seconds=4))
    assert early.status == s1.status and early.create is None and early.wake_at == s1.wake_at
    s2 = advance(s1, pods=failed, run_spec=policy_spec, now=T0 + timedelta(seconds=5))
    assert s2.create == 1 and s2.status.next_attempt_after is None
    assert s2.status.phase == "Pending"


def test_crash_after_recording_before_creating_recreates_with_a_fresh_plan() -> None:
    s0 = next_step(state(TrainingRunStatus(), checkpoints=[ckpt(100, 0)]))
    assert s0.status.attempts[0].resumed_from.step == 100  # type: ignore[union-attr]
    # The operator died before creating the pod; meanwhile checkpoint 100 turned Invalid.
    again = advance(s0, checkpoints=[ckpt(100, 0, "Invalid"), ckpt(50, 0)])
    assert again.create == 0
    assert again.resume.target == checkpoint_ref(ckpt(50, 0), ROOT)
    assert again.status.attempts[0].resumed_from.step == 50  # type: ignore[union-attr]
    assert len(again.status.attempts) == 1 and not again.notes


def test_a_next_pod_created_before_a_lost_write_is_adopted() -> None:
    """The pod of attempt 1 exists (its recording write was lost): record what it really
    resumes from, create nothing, and keep the restart even if the verdict would now differ."""
    s0 = next_step(state(TrainingRunStatus()))
    ref = checkpoint_ref(ckpt(100, 0), ROOT)
    created = AttemptPod(
        name="r-attempt-1", namespace="ns", run="r", attempt=1, owner_uid="uid", resumed_from=ref
    )
    failed = pod(0, "Failed", Failure((1,), exit_code=1))
    s1 = advance(s0, pods={0: failed, 1: created}, checkpoints=[ckpt(100, 0), ckpt(200, 0)])
    assert s1.create is None
    assert s1.status.attempts[1].resumed_from == ref
    assert (s1.status.attempt, s1.status.restarts) == (1, 1)
    no_budget = spec(maxRestarts=0)
    s2 = advance(s0, pods={0: failed, 1: created}, run_spec=no_budget)
    assert s2.status.phase == "Pending" and s2.status.attempt == 1 and s2.create is None


def test_attempt_pod_reads_its_resume_point_from_its_env() -> None:
    plan = resume_plan([ckpt(100, 0), ckpt(200, 1)])
    body = build_pod(
        run="r",
        namespace="ns",
        run_uid="uid",
        template=TEMPLATE,
        attempt=2,
        store_root=ROOT,
        resume=Resume.from_plan(plan, ROOT),
    )
    parsed = AttemptPod.from_body(body)
    assert parsed is not None
    assert parsed.resumed_from == checkpoint_ref(ckpt(200, 1), ROOT)
    scratch = build_pod(
        run="r",
        namespace="ns",
        run_uid="uid",
        template=TEMPLATE,
        attempt=0,
        store_root=ROOT,
        resume=Resume(),
    )
    assert AttemptPod.from_body(scratch).resumed_from is None  # type: ignore[union-attr]


def test_pod_deleted_while_running_is_a_failure() -> None:
    s0 = next_step(state(TrainingRunStatus()))
    running = advance(s0, pods={0: pod(0, "Running")})
    gone = advance(running, pods={})
    assert gone.create == 1
    assert gone.status.attempts[0].reason == "PodDeleted"
    assert gone.status.restarts == 1


def test_bad_input_fails_once_and_recovers() -> None:
    bad = next_step(state(TrainingRunStatus(), invalid=("StoreNotAllowed", "no")))
    assert bad.status.phase == "Failed" and bad.create is None
    assert cond(bad, "Failed") == ("True", "StoreNotAllowed")
    assert [n.reason for n in bad.notes] == ["StoreNotAllowed"]
    again = advance(bad, invalid=("StoreNotAllowed", "no"))
    assert again.status == bad.status and not again.notes
    fixed = advance(bad)
    assert fixed.create == 0 and fixed.status.phase == "Pending"
    assert cond(fixed, "Failed") == ("False", "NoFailure")


def test_other_conditions_are_kept() -> None:
    status = TrainingRunStatus.model_validate(
        {"conditions": [{"type": "ConsumersHealthy", "status": "True", "reason": "Reporting"}]}
    )
    step = next_step(state(status))
    assert {c.type for c in step.status.conditions} == {
        "ConsumersHealthy",
        "Failed",
        "Progressing",
        "Ready",
    }


# --- random histories -------------------------------------------------------------------------

events = st.one_of(
    st.tuples(
        st.just("ckpt"), st.integers(1, 30), st.sampled_from(["Ready", "Invalid", "Pending"])
    ),
    st.tuples(st.just("fail"), st.sampled_from([1, 2, 137]), st.sampled_from(["", "Preempted"])),
    st.tuples(st.just("run"), st.just(0), st.just("")),
    st.tuples(st.just("crash"), st.just(0), st.sampled_from(["all", "write"])),
    st.tuples(st.just("tick"), st.integers(0, 3), st.just("")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40), st.integers(0, 4), st.sampled_from([0, 1]))
def test_random_histories_keep_the_invariants(
    history: list[tuple[str, int, str]], max_restarts: int, initial: int
) -> None:
    """Drive the controller loop (with crashes that lose the decision or the pod creation)
    and check after every step: attempts are consecutive, one pod per attempt at most, each
    pod resumes from the newest Ready checkpoint at its creation, counters match history."""
    run_spec = spec(
        maxRestarts=max_restarts,
        backoff={"initialSeconds": initial, "maxSeconds": 4},
        rules=[
            {"action": "Ignore", "onReasons": ["Preempted"]},
            {"action": "FailRun", "onExitCodes": {"operator": "In", "values": [2]}},
        ],
    )
    status = TrainingRunStatus()
    pods: dict[int, AttemptPod] = {}
    checkpoints: dict[str, CheckpointInfo] = {}
    now = T0
    created: list[int] = []
    crash = ""

    targets: dict[int, str | None] = {}  # the resume point each pod was created with

    def loop() -> None:
        nonlocal status, crash
        step = next_step(state(status, dict(pods), list(checkpoints.values()), now, run_spec))
        lost, crash = crash, ""
        if lost == "all":  # killed before anything went out
            return
        if lost != "write":  # the status write and the creation race; either may be lost
            status = step.status
        if step.create is not None:
            assert step.create not in pods, "a pod that exists is never created again"
            target = resume_target(checkpoints.values())
            assert step.resume.target == checkpoint_ref(target, ROOT)
            assert step.status.attempts[-1].attempt == step.create
            ref = checkpoint_ref(target, ROOT)
            pods[step.create] = replace(pod(step.create), resumed_from=ref)
            targets[step.create] = target.name if target else None
            created.append(step.create)
        for record in status.attempts:  # status names the resume point each pod really has
            if record.attempt in targets:
                name = record.resumed_from.name if record.resumed_from else None
                assert name == targets[record.attempt]
        if lost:
            return
        # A second pass on the same inputs changes nothing (the controller is idempotent).
        same = next_step(state(status, dict(pods), list(checkpoints.values()), now, run_spec))
        assert same.status == status and same.create is None and not same.notes

    loop()
    for kind, value, extra in history:
        current = status.attempt
        if kind == "ckpt" and current is not None:
            c = ckpt(value * 10, current, extra)
            checkpoints[c.name] = c
        elif kind == "fail" and current is not None and current in pods:
            if pods[current].phase in ("Pending", "Running"):
                reasons = frozenset({extra} if extra else ())
                f = Failure((value,), reasons, exit_code=value, reason=extra or None)
                pods[current] = pod(current, "Failed", f)
        elif kind == "run" and current is not None and current in pods:
            if pods[current].phase == "Pending":
                pods[current] = pod(current, "Running")
        elif kind == "crash":
            crash = extra
        elif kind == "tick":
            now += timedelta(seconds=value)
        loop()
        attempts = [a.attempt for a in status.attempts]
        assert attempts == list(range(len(attempts)))
        assert sorted(pods) == sorted(created) == sorted(set(created))
        assert set(pods) <= set(attempts)
        assert all(a.phase in ("Failed", "Succeeded") for a in status.attempts[:-1])
        # Every Retry spent one restart, except the one that failed the run (budget, progress).
        retried = [a for a in status.attempts if a.action == "Retry"]
        spent = len(retried) - (
            1 if status.phase == "Failed" and retried[-1:] == status.attempts[-1:] else 0
        )
        assert status.restarts == spent <= max_restarts
        if status.phase == "Failed":
            assert status.attempts[-1].phase == "Failed"
