"""What ``kubectl ckpt`` reports, decided by the operator's own policies on listed objects.

Every verdict comes from the function the operator acts on: deletion from
:func:`~ckpt_operator.policy.deletion.blockers`, the resume point from
:func:`~ckpt_operator.policy.resume.resume_plan`, retention from
:func:`~ckpt_operator.policy.retention.decide`, each applied to views built from the objects as
listed now, so the plugin cannot disagree with the operator. Reports are plain dicts: they are
the ``-o json|yaml`` output, and the tables show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.policy import retention
from ckpt_operator.policy.consumers import consumers_of
from ckpt_operator.policy.deletion import blockers, newest_protected
from ckpt_operator.policy.resume import Resume, ResumePlan, newest_first, resume_plan
from ckpt_operator.policy.resume import unusable_reason as resume_unusable_reason
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import RunView

Body = dict[str, Any]


class ReportError(LookupError):
    """The report's subject does not exist."""


@dataclass(frozen=True)
class Snapshot:
    """One namespace's Checkpoints, TrainingRuns and pods, listed at ``now``."""

    checkpoints: list[Body]
    runs: list[Body]
    pods: list[Body]
    now: datetime

    @cached_property
    def _runs(self) -> dict[str, Body]:
        return {r["metadata"]["name"]: r for r in self.runs}

    @cached_property
    def _infos(self) -> dict[str, list[CheckpointInfo]]:
        by_run: dict[str, list[CheckpointInfo]] = {}
        for body in self.checkpoints:
            info = CheckpointInfo.from_body(body)
            by_run.setdefault(info.run, []).append(info)
        return by_run

    @cached_property
    def _newest(self) -> dict[str, set[str]]:
        """Per run, the names :func:`newest_protected` keeps: computed once per run, where the
        operator's finalizer asks per checkpoint."""
        return {run: newest_protected(infos) for run, infos in self._infos.items()}

    @cached_property
    def _consumers(self) -> list[ConsumerView]:
        return [ConsumerView.from_body(p) for p in self.pods]

    def run(self, name: str) -> Body:
        if name not in self._runs:
            raise ReportError(f"TrainingRun {name} not found")
        return self._runs[name]

    def run_view(self, name: str) -> RunView | None:
        body = self._runs.get(name)
        return RunView.from_body(body) if body is not None else None

    def infos(self, run: str) -> list[CheckpointInfo]:
        return self._infos.get(run, [])

    def blockers(self, body: Body, *, force: bool = False) -> list[str]:
        """What would hold the checkpoint's storage back if it were deleted now."""
        info = CheckpointInfo.from_body(body)
        if force:
            info = replace(info, force_delete=True)
        run = self.run_view(info.run)
        found = consumers_of(info.run, run.selector if run else None, self._consumers)
        newest = info.name in self._newest.get(info.run, set())
        return blockers(info, run=run, newest=newest, consumers=found, now=self.now)


def _status(body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(body.get("status") or {})


def verification(body: Mapping[str, Any]) -> dict[str, Any]:
    """The operator's last word on a checkpoint's files."""
    status = _status(body)
    return {
        "phase": status.get("phase") or "Pending",
        "verifiedAt": status.get("verifiedAt"),
        "message": status.get("message"),
    }


def row(snapshot: Snapshot, body: Body) -> dict[str, Any]:
    """One line of ``kubectl ckpt list``."""
    spec, status = body["spec"], _status(body)
    return {
        "name": body["metadata"]["name"],
        "run": spec["run"],
        "step": spec["step"],
        "attempt": spec["attempt"],
        "format": spec.get("format", "dir"),
        "kind": spec.get("kind", "full"),
        "phase": status.get("phase") or "Pending",
        "terminating": bool(body["metadata"].get("deletionTimestamp")),
        "sizeBytes": status.get("sizeBytes"),
        "blockedBy": snapshot.blockers(body),
        "created": body["metadata"].get("creationTimestamp"),
    }


def _messages(snapshot: Snapshot) -> dict[str, str]:
    return {c["metadata"]["name"]: _status(c).get("message") or "" for c in snapshot.checkpoints}


def resume_verdict(
    checkpoint: CheckpointInfo, plan: ResumePlan, message: str = ""
) -> dict[str, Any]:
    """Where ``checkpoint`` stands for the next attempt: target, fallback, or why not."""
    rank = next((i for i, c in enumerate(plan.candidates) if c.name == checkpoint.name), None)
    if rank == 0:
        return {"verdict": "target"}
    if rank is not None:
        return {"verdict": "fallback", "rank": rank}
    reason = resume_unusable_reason(checkpoint)
    if reason is None:
        return {"verdict": "not tried", "reason": f"older than the {len(plan.candidates)} tried"}
    if checkpoint.phase == "Invalid" and message:
        reason += f" ({message})"
    return {"verdict": "skipped", "reason": reason}


def verdict_text(verdict: Mapping[str, Any]) -> str:
    if verdict["verdict"] == "target":
        return "resume target"
    if verdict["verdict"] == "fallback":
        return f"fallback {verdict['rank']}"
    return f"{verdict['verdict']}: {verdict['reason']}"


def resume_report(snapshot: Snapshot, run_name: str) -> dict[str, Any]:
    """``kubectl ckpt resume-target RUN``: what the next attempt gets, newest first, and why
    each newer checkpoint is skipped; older than the last one tried are left out."""
    run = snapshot.run(run_name)
    infos = snapshot.infos(run_name)
    plan = resume_plan(infos)
    resume = Resume.from_plan(plan, run["spec"]["store"]["uri"])
    messages = _messages(snapshot)
    rows = []
    for c in newest_first(infos):
        verdict = resume_verdict(c, plan, messages.get(c.name, ""))
        if verdict["verdict"] == "not tried":
            break
        rows.append(
            {"name": c.name, "step": c.step, "attempt": c.attempt, "phase": c.phase, **verdict}
        )
    status = _status(run)
    current = (status.get("attempts") or [{}])[-1]
    return {
        "run": run_name,
        "phase": status.get("phase"),
        "attempt": status.get("attempt"),
        "currentResumedFrom": (current.get("resumedFrom") or {}).get("name"),
        "next": {
            names.ENV_RESUME_FROM: resume.target.uri if resume.target else "",
            names.ENV_RESUME_STEP: str(resume.target.step) if resume.target else "",
            names.ENV_RESUME_CANDIDATES: list(resume.candidates),
        },
        "target": resume.target.wire() if resume.target else None,
        "checkpoints": rows,
    }


def gc_plan(snapshot: Snapshot, run_name: str) -> dict[str, Any]:
    """``kubectl ckpt gc --plan RUN``: what retention and the finalizer delete next, and what
    holds the rest (a retention rule, or what blocks the storage of what goes)."""
    run = snapshot.run(run_name)
    view = RunView.from_body(run)
    bodies = {c["metadata"]["name"]: c for c in snapshot.checkpoints}
    decisions = retention.decide(
        snapshot.infos(run_name), view.retention, protected=view.resume_targets
    )
    rows: list[dict[str, Any]] = []
    for d in decisions:
        c = d.checkpoint
        goes = d.expires or c.terminating
        blockers = snapshot.blockers(bodies[c.name]) if goes else []
        rows.append(
            {
                "name": c.name,
                "step": c.step,
                "attempt": c.attempt,
                "phase": c.phase,
                "sizeBytes": c.size_bytes,
                "action": "keep" if not goes else "held" if blockers else "delete",
                "reason": d.reason,
                "blockedBy": blockers,
            }
        )
    summary = {
        action: sum(1 for r in rows if r["action"] == action)
        for action in ("delete", "held", "keep")
    }
    freed = sum(r["sizeBytes"] or 0 for r in rows if r["action"] == "delete")
    return {
        "run": run_name,
        "retention": dict(view.retention) if view.retention else None,
        "checkpoints": rows,
        "summary": {**summary, "bytesFreed": freed},
    }


def describe(
    snapshot: Snapshot, body: Body, manifest: dict[str, Any] | None, source: str
) -> dict[str, Any]:
    """``kubectl ckpt describe``: the record, its verification, where it stands for resume,
    retention and deletion, and its manifest (read from ``source``)."""
    info = CheckpointInfo.from_body(body)
    meta, status = body["metadata"], _status(body)
    view = snapshot.run_view(info.run)
    root = (view.store_uri if view else "") or (meta.get("annotations") or {}).get(
        names.ANNOTATION_STORE, ""
    )
    siblings = snapshot.infos(info.run)
    decision = next(
        d
        for d in retention.decide(
            siblings,
            view.retention if view else None,
            protected=view.resume_targets if view else (),
        )
        if d.checkpoint.name == info.name
    )
    return {
        "name": info.name,
        "namespace": meta.get("namespace"),
        "run": info.run,
        "runExists": view is not None,
        "step": info.step,
        "attempt": info.attempt,
        "kind": info.kind,
        "format": info.format,
        "uri": layout.join_uri(root, info.path) if root else None,
        "created": meta.get("creationTimestamp"),
        "verification": {
            "phase": info.phase,
            "message": status.get("message"),
            "verifiedAt": status.get("verifiedAt"),
            "sizeBytes": status.get("sizeBytes"),
            "digest": status.get("digest"),
            "conditions": status.get("conditions") or [],
        },
        "resume": resume_verdict(info, resume_plan(siblings), status.get("message") or ""),
        "retention": {"expires": decision.expires, "reason": decision.reason},
        "deletion": {
            "terminating": info.terminating,
            "forceDelete": info.force_delete,
            "blockedBy": snapshot.blockers(body),
        },
        "manifest": {"source": source, **(manifest or {})},
    }
