"""End-state checks: has everything converged, and is anything left stuck.

They read an :class:`~ckpt_operator.testing.invariants.InvariantChecker` fed with everything
recorded so far, whose state then mirrors the API server's. A test stops injecting faults,
waits until :func:`problems` is empty (that wait is the convergence time; what is left at its
deadline fails **crash convergence**), then deletes every run and requires
:func:`leftovers` to be empty (no stuck finalizer, every store emptied).
"""

from __future__ import annotations

from collections.abc import Mapping

from ckpt_operator.storage import layout
from ckpt_operator.testing.history import (
    CHECKPOINTS,
    PODS,
    RUNS,
    Body,
    attempt_of,
    ckpt_key,
    live,
    meta,
    phase,
    resume_of,
    terminating,
    usable,
)
from ckpt_operator.testing.invariants import InvariantChecker

Failures = Mapping[str, Mapping[int, str]]
"""Failures a test injected: run -> attempt -> the rule action it expects (Retry, Ignore)."""


def problems(checker: InvariantChecker, failures: Failures | None = None) -> list[str]:
    """What has not converged yet; empty once every run, checkpoint and store entry has."""
    found: list[str] = []
    for name, body in sorted(checker.objects[RUNS].items()):
        if not terminating(body):
            found += _run_problems(checker, name, body)
    for run, expected in (failures or {}).items():
        if run in checker.objects[RUNS]:
            found += _counter_problems(run, checker.objects[RUNS][run], expected)
    for name, body in sorted(checker.objects[CHECKPOINTS].items()):
        if phase(body) in ("", "Pending"):
            found.append(f"checkpoint {name} not verified yet")
        elif terminating(body) and not checker.blockers(name):
            found.append(f"checkpoint {name} still Terminating though nothing blocks it")
    for run, entry in sorted(checker.committed):
        parsed = layout.parse_committed(entry)
        run_body = checker.objects[RUNS].get(run)
        if parsed is None or run_body is None or terminating(run_body):
            continue
        if parsed.object_name(run) not in checker.objects[CHECKPOINTS]:
            found.append(f"store entry {run}/{entry} has no Checkpoint")
    return found


def leftovers(checker: InvariantChecker) -> list[str]:
    """After every run was deleted: objects still there (a finalizer stuck) and store entries."""
    found = [
        f"{kind} {name} remains (finalizers {meta(body).get('finalizers')})"
        for kind in (RUNS, CHECKPOINTS)
        for name, body in sorted(checker.objects[kind].items())
    ]
    found += [f"store entry {run}/{entry} remains" for run, entry in sorted(checker.committed)]
    return found


def _run_problems(checker: InvariantChecker, run: str, body: Body) -> list[str]:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    found = []
    if status.get("observedGeneration") != meta(body).get("generation"):
        found.append(f"run {run}: observedGeneration behind")
    pods = [p for p in checker.objects[PODS].values() if (attempt_of(p) or ("",))[0] == run]
    records = status.get("attempts") or []
    if not records:
        return found if status.get("phase") == "Failed" else [*found, f"run {run}: no attempt"]
    last = records[-1]
    n = int(last["attempt"])
    top = max((_attempt(p) for p in pods), default=n)
    if top != n:
        found.append(f"run {run}: status at attempt {n}, pods up to {top}")
    stale = sorted(str(meta(p)["name"]) for p in pods if live(p) and _attempt(p) < n)
    if stale:
        found.append(f"run {run}: workers of ended attempts alive: {stale}")
    if last.get("phase") in ("Pending", "Running"):
        workers = [p for p in pods if _attempt(p) == n]
        if len(workers) < int(spec.get("numNodes") or 1):
            found.append(f"run {run}: attempt {n} has {len(workers)} workers")
        if any(not live(w) for w in workers):
            found.append(f"run {run}: attempt {n} ended, status says {last.get('phase')}")
        running = all(phase(w) == "Running" for w in workers)
        if workers and running and last.get("phase") == "Pending":
            found.append(f"run {run}: attempt {n} runs, status says Pending")
        target = (last.get("resumedFrom") or {}).get("name")
        if any((resume_of(w, run) or (None,))[0] != target for w in workers):
            found.append(f"run {run}: attempt {n} status resumes from {target}, its pods not")
    usable_full = [
        (ckpt_key(c), name)
        for name, c in checker.objects[CHECKPOINTS].items()
        if c["spec"]["run"] == run and usable(c)
    ]
    newest = max(usable_full)[1] if usable_full else None
    latest = (status.get("latestCheckpoint") or {}).get("name")
    if latest != newest:
        found.append(f"run {run}: latestCheckpoint {latest}, newest Ready is {newest}")
    return found


def _counter_problems(run: str, body: Body, expected: Mapping[int, str]) -> list[str]:
    status = body.get("status") or {}
    records = status.get("attempts") or []
    found = []
    for attempt, action in sorted(expected.items()):
        record = records[attempt] if attempt < len(records) else {}
        if (record.get("phase"), record.get("action")) != ("Failed", action):
            found.append(f"run {run}: attempt {attempt} recorded as {record}, expected {action}")
    retries = sum(1 for a in expected.values() if a == "Retry")
    ignored = sum(1 for a in expected.values() if a == "Ignore")
    counted = (status.get("restarts") or 0, status.get("preemptions") or 0, len(records))
    if counted != (retries, ignored, len(expected) + 1):
        found.append(
            f"run {run}: restarts, preemptions, attempts {counted}, "
            f"injected {(retries, ignored, len(expected) + 1)}"
        )
    return found


def _attempt(pod: Body) -> int:
    ident = attempt_of(pod)
    return ident[1] if ident else -1
