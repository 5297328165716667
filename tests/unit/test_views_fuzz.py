"""Every ``from_body`` parser takes any JSON-ish body without raising.

An exception in a Kopf index function or handler is retried again and again (a hot loop over a
hostile object), so each parser must turn whatever it is given into a view, and the decisions
taken on those views must not raise either. Bodies are valid ones with any field, at any depth,
replaced by an arbitrary JSON value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_operator.api import names
from ckpt_operator.api.models import MAX_STEP
from ckpt_operator.policy import records, retention
from ckpt_operator.policy.consumers import consumers_of
from ckpt_operator.policy.deletion import deletion_blockers
from ckpt_operator.storage.layout import parse_committed
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod, ConsumerView, failure_of, waiting_reason
from ckpt_operator.views.run import RunView
from ckpt_operator.views.workload import AdmittedPod

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "-1", "1.5", "+5", " 7 ", "1e3", "٣", "1_000", "9" * 30, "\x00", "‮"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def shaped(template: Any) -> st.SearchStrategy[Any]:
    """``template`` with any part (at any depth) possibly replaced by an arbitrary value."""
    if isinstance(template, dict):
        inner = st.fixed_dictionaries({k: shaped(v) for k, v in template.items()})
    elif isinstance(template, list):
        inner = st.lists(shaped(template[0]), max_size=3) if template else st.just([])
    else:
        inner = st.just(template)
    return st.one_of(inner, inner, json_values)


def body(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A body (always an object, as Kopf and the API give it) shaped like ``template``."""
    return st.fixed_dictionaries({k: shaped(v) for k, v in template.items()})


META = {
    "name": "x",
    "namespace": "ns",
    "uid": "u",
    "creationTimestamp": "2025-01-01T00:00:00Z",
    "deletionTimestamp": "2025-01-01T00:00:00Z",
    "labels": {names.LABEL_RUN: "r", names.LABEL_ATTEMPT: "1", names.LABEL_NODE_RANK: "0"},
    "annotations": {names.ANNOTATION_LOADED_STEP: "5", names.ANNOTATION_FORCE_DELETE: "true"},
    "ownerReferences": [{"controller": True, "uid": "u"}],
    "managedFields": [
        {
            "time": "2025-01-01T00:00:00Z",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:ckpt.dev/loaded-step": {}}}},
        }
    ],
}
CONDITIONS = [{"type": "Verified", "status": "True", "reason": "Verified"}]
CHECKPOINT = {
    "metadata": META,
    "spec": {
        "run": "r",
        "step": 5,
        "attempt": 0,
        "path": "step-0000000005.attempt-0",
        "format": "dir",
        "kind": "full",
        "metrics": {"loss": 0.5},
    },
    "status": {"phase": "Ready", "sizeBytes": 10, "conditions": CONDITIONS},
}
RUN = {
    "metadata": META,
    "spec": {
        "store": {"uri": "file:///x", "secretRef": {"name": "s"}},
        "consumers": {
            "selector": {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "a"}]},
            "reportTimeoutSeconds": 5,
        },
        "retention": {"keepLast": 1, "keepBest": {"metric": "loss"}, "maxBytes": 10},
        "verify": "size",
    },
    "status": {"attempts": [{"phase": "Running", "resumedFrom": {"name": "c"}}]},
}
CONTAINER_STATUS = {
    "name": "trainer",
    "state": {
        "terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2025-01-01T00:00:00Z"},
        "waiting": {"reason": "ErrImagePull", "message": "no"},
    },
}
POD = {
    "metadata": META,
    "spec": {"containers": [{"name": "trainer", "env": [{"name": "CKPT_RESUME_FROM"}]}]},
    "status": {
        "phase": "Failed",
        "reason": "Evicted",
        "startTime": "2025-01-01T00:00:00Z",
        "containerStatuses": [CONTAINER_STATUS],
        "initContainerStatuses": [CONTAINER_STATUS],
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "Preempted"}],
    },
}


@FUZZ
@given(body(CHECKPOINT), body(RUN), body(POD))
def test_views_of_hostile_bodies_and_decisions_on_them_never_raise(
    checkpoint: Any, run: Any, pod: Any
) -> None:
    info = CheckpointInfo.from_body(checkpoint)
    assert isinstance(info.run, str) and isinstance(info.path, str)
    # Consistent exactly when the store layout reads its path back as its spec says.
    parsed = parse_committed(info.path)
    assert info.consistent is (
        parsed is not None
        and (parsed.step, parsed.attempt, parsed.format, parsed.kind)
        == (info.step, info.attempt, info.format, info.kind)
    )
    view = RunView.from_body(run)
    assert view.report_timeout_s > 0
    consumer = ConsumerView.from_body(pod)
    AttemptPod.from_body(pod)
    AdmittedPod.from_body(pod, "ns")
    found = consumers_of(view.name, view.selector, [consumer])
    deletion_blockers(info, run=view, siblings=[info], consumers=found, now=NOW)
    retention.expired([info], view.retention, protected=view.resume_targets)
    records.not_record(info, [info])


@FUZZ
@given(json_values)
def test_pod_status_parsers_take_any_value(status: Any) -> None:
    for value in (status, {"containerStatuses": status}, {"conditions": status}):
        if isinstance(value, dict):
            failure_of(value, "trainer")
            waiting_reason(value)


@FUZZ
@given(st.one_of(json_values, st.integers(-1, 2 * MAX_STEP).map(str)))
def test_a_loaded_step_is_plain_digits_within_the_store_steps_or_no_report(raw: Any) -> None:
    pod = {"metadata": {"name": "c", "annotations": {names.ANNOTATION_LOADED_STEP: raw}}}
    view = ConsumerView.from_body(pod)
    plain = isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit()
    if raw is None:  # no annotation
        assert view.loaded_step is None and view.bad_report is None
    elif plain and int(raw) <= MAX_STEP:
        assert view.loaded_step == int(raw) and view.bad_report is None
    else:
        assert view.loaded_step is None and view.bad_report is not None


def test_reports_that_are_no_step_keep_blocking() -> None:
    for raw in ("-1", "1.5", "+5", "1e3", "٣", "1_000", "0x10", "9" * 30, "", "ten", "5\n6"):
        pod = {"metadata": {"name": "c", "annotations": {names.ANNOTATION_LOADED_STEP: raw}}}
        assert ConsumerView.from_body(pod).loaded_step is None, raw
    for raw, step in ((" 7 ", 7), ("0", 0), (str(MAX_STEP), MAX_STEP)):
        pod = {"metadata": {"name": "c", "annotations": {names.ANNOTATION_LOADED_STEP: raw}}}
        assert ConsumerView.from_body(pod).loaded_step == step
