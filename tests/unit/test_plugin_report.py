"""``kubectl ckpt``'s reports on listed objects, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_operator.api import names
from ckpt_operator.cli.plugin import output, report
from ckpt_operator.cli.plugin.targets import TargetError, resolve
from ckpt_operator.policy.deletion import deletion_blockers
from ckpt_operator.policy.resume import MAX_CANDIDATES
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.run import RunView

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STAMP = "2025-12-31T23:00:00Z"


def ckpt(
    step: int,
    phase: str = "Ready",
    *,
    attempt: int = 0,
    kind: names.Kind = "full",
    fmt: names.Format = "dir",
    terminating: bool = False,
    size: int = 100,
    message: str = "",
    run: str = "r",
) -> dict[str, Any]:
    name = layout.CheckpointName(step, attempt, fmt, kind)
    meta: dict[str, Any] = {
        "name": name.object_name(run),
        "namespace": "ns",
        "creationTimestamp": STAMP,
    }
    if terminating:
        meta["deletionTimestamp"] = STAMP
    verified = [{"type": "Verified", "status": "True"}] if phase in ("Ready", "Deleting") else []
    return {
        "metadata": meta,
        "spec": {
            "run": run,
            "step": step,
            "attempt": attempt,
            "path": name.path,
            "format": fmt,
            "kind": kind,
        },
        "status": {"phase": phase, "sizeBytes": size, "message": message, "conditions": verified},
    }


def training_run(
    name: str = "r", retention: dict[str, Any] | None = None, resumed_from: str | None = None
) -> dict[str, Any]:
    attempts = [{"attempt": 0, "pod": f"{name}-attempt-0", "phase": "Running"}]
    if resumed_from:
        attempts[0]["resumedFrom"] = {"name": resumed_from, "step": 1, "attempt": 0, "uri": "x"}
    spec: dict[str, Any] = {"store": {"uri": f"file:///data/{name}"}}
    if retention:
        spec["retention"] = retention
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
        "status": {"phase": "Running", "attempt": 0, "attempts": attempts},
    }


def consumer(name: str, loaded: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {names.LABEL_CONSUMER_OF: "r"},
            "annotations": {names.ANNOTATION_LOADED_STEP: str(loaded)},
            "creationTimestamp": (NOW - timedelta(seconds=5)).isoformat(),
        },
        "status": {"phase": "Running"},
    }


def snap(checkpoints: list[dict[str, Any]], **run: Any) -> report.Snapshot:
    pods = [consumer("server", run.pop("loaded"))] if "loaded" in run else []
    return report.Snapshot(checkpoints, [training_run(**run)], pods, NOW)


def test_list_rows_say_what_would_hold_the_storage_back() -> None:
    bodies = [ckpt(1), ckpt(2, size=2_500_000), ckpt(3, "Invalid")]
    rows = [report.row(snap(bodies, loaded=1), b) for b in bodies]
    assert [r["blockedBy"] for r in rows] == [
        ["consumer server has loaded step 1, needs > 1"],
        ["consumer server has loaded step 1, needs > 2", "newest Ready checkpoint of r"],
        ["consumer server has loaded step 1, needs > 3"],
    ]
    assert report.row(snap(bodies, loaded=2), bodies[0])["blockedBy"] == []
    assert rows[1]["sizeBytes"] == 2_500_000 and output.size(2_500_000) == "2.5 MB"
    assert output.age(rows[0]["created"], NOW) == "1h"
    assert output.size(None) == "-" and output.age(None, NOW) == "-"


def test_resume_report_explains_each_newer_checkpoint_and_stops_at_the_last_tried() -> None:
    bodies = [ckpt(s) for s in range(1, 12)] + [
        ckpt(12, "Invalid", message="model.bin: checksum mismatch"),
        ckpt(13, "Pending"),
        ckpt(14, terminating=True),
        ckpt(15, kind="weights"),
    ]
    data = report.resume_report(snap(bodies, resumed_from="r-step-3-a0"), "r")
    assert data["target"]["name"] == "r-step-11-a0"
    assert data["currentResumedFrom"] == "r-step-3-a0"
    assert (
        data["next"][names.ENV_RESUME_FROM]
        == "file:///data/r/" + layout.CheckpointName(11, 0, "dir").path
    )
    assert len(data["next"][names.ENV_RESUME_CANDIDATES]) == MAX_CANDIDATES
    texts = [(r["step"], report.verdict_text(r)) for r in data["checkpoints"]]
    assert texts[:5] == [
        (15, "skipped: weights-only export: no training state to resume"),
        (14, "skipped: Terminating: being deleted"),
        (13, "skipped: Pending: not verified yet"),
        (12, "skipped: Invalid: failed verification (model.bin: checksum mismatch)"),
        (11, "resume target"),
    ]
    assert texts[-1] == (11 - MAX_CANDIDATES + 1, f"fallback {MAX_CANDIDATES - 1}")


def test_resume_report_from_scratch_lists_every_reason() -> None:
    data = report.resume_report(snap([ckpt(1, "Invalid"), ckpt(2, kind="weights")]), "r")
    assert data["target"] is None
    assert data["next"] == {
        names.ENV_RESUME_FROM: "",
        names.ENV_RESUME_STEP: "",
        names.ENV_RESUME_CANDIDATES: [],
    }
    assert [r["verdict"] for r in data["checkpoints"]] == ["skipped", "skipped"]


def test_gc_plan_joins_retention_and_deletion() -> None:
    bodies = [
        ckpt(1, size=10),
        ckpt(2, size=20),
        ckpt(3, "Deleting", terminating=True, size=30),
        ckpt(4, "Deleting", terminating=True, size=40),
        ckpt(5, "Invalid"),
        ckpt(6),
        ckpt(7),
    ]
    data = report.gc_plan(snap(bodies, retention={"keepLast": 1}, loaded=3), "r")
    actions = [(r["step"], r["action"], r["reason"], r["blockedBy"]) for r in data["checkpoints"]]
    assert actions == [
        (1, "delete", "not kept by keepLast=1", []),
        (2, "delete", "not kept by keepLast=1", []),
        (3, "held", "being deleted already", ["consumer server has loaded step 3, needs > 3"]),
        (4, "held", "being deleted already", ["consumer server has loaded step 3, needs > 4"]),
        (5, "keep", "Invalid: retention expires only Ready checkpoints", []),
        (6, "held", "not kept by keepLast=1", ["consumer server has loaded step 3, needs > 6"]),
        (7, "keep", "newest Ready checkpoint", []),
    ]
    assert data["summary"] == {"delete": 2, "held": 3, "keep": 2, "bytesFreed": 30}
    assert data["retention"] == {"keepLast": 1}


def test_describe_gathers_every_verdict() -> None:
    bodies = [ckpt(1), ckpt(2), ckpt(3, "Invalid", message="missing")]
    data = report.describe(snap(bodies, retention={"keepLast": 1}), bodies[0], None, "status only")
    assert data["uri"] == "file:///data/r/" + layout.CheckpointName(1, 0, "dir").path
    assert data["resume"] == {"verdict": "fallback", "rank": 1}
    assert data["retention"] == {"expires": True, "reason": "not kept by keepLast=1"}
    assert data["deletion"] == {"terminating": False, "forceDelete": False, "blockedBy": []}
    assert data["manifest"] == {"source": "status only"}
    orphan = report.describe(report.Snapshot(bodies, [], [], NOW), bodies[2], None, "status only")
    assert orphan["runExists"] is False and orphan["uri"] is None
    assert orphan["resume"]["reason"] == "Invalid: failed verification (missing)"


def test_a_missing_run_is_reported() -> None:
    with pytest.raises(report.ReportError, match="TrainingRun nope not found"):
        report.gc_plan(snap([]), "nope")


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            st.integers(0, 2),
            st.sampled_from(["Ready", "Pending", "Invalid", "Deleting"]),
            st.sampled_from(["full", "weights"]),
            st.booleans(),
        ),
        max_size=15,
    ),
    st.integers(0, 30),
)
def test_blockers_are_the_operators_with_every_sibling(
    spec: list[tuple[int, int, str, names.Kind, bool]], loaded: int
) -> None:
    """The snapshot decides "newest" once per run; the answer must be deletion_blockers'."""
    bodies = list(
        {(s, a, k): ckpt(s, p, attempt=a, kind=k, terminating=t) for s, a, p, k, t in spec}.values()
    )
    snapshot = snap(bodies, loaded=loaded)
    infos = [CheckpointInfo.from_body(b) for b in bodies]
    run = RunView.from_body(snapshot.runs[0])
    consumers = snapshot._consumers
    for body, info in zip(bodies, infos, strict=True):
        expected = deletion_blockers(info, run=run, siblings=infos, consumers=consumers, now=NOW)
        assert snapshot.blockers(body) == expected


def test_targets_name_path_uri_and_run_step() -> None:
    bodies = [ckpt(1), ckpt(2, fmt="tar"), ckpt(1, run="other")]
    runs = [training_run(), training_run("other")]
    tar = layout.CheckpointName(2, 0, "tar").path
    assert resolve("r-step-1-a0", bodies, runs) == [bodies[0]]
    assert resolve("r/2", bodies, runs) == [bodies[1]]
    assert resolve(f"file:///data/r/{tar}", bodies, runs) == [bodies[1]]
    assert resolve(f"/data/r/{tar}", bodies, runs) == [bodies[1]]
    with pytest.raises(TargetError, match="several runs"):
        resolve(layout.CheckpointName(1, 0, "dir").path, bodies, runs)
    with pytest.raises(TargetError, match="no checkpoint at step 9"):
        resolve("r/9", bodies, runs)
    with pytest.raises(TargetError, match="not a checkpoint name"):
        resolve("nonsense", bodies, runs)
