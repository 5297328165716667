"""An attempt's workers taken together: a gang succeeds together and fails together.

A TrainingRun with ``numNodes: N`` runs N worker pods per attempt. What the attempt state
machine needs to know about them is one :class:`Outcome`: the first failed worker fails the
attempt (its exit code and reason go through the restart rules), the attempt succeeds when
every worker exited 0, and it runs once every worker runs. A single-node run is a gang of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ckpt_operator.api import names
from ckpt_operator.api.models import WorkerStatus
from ckpt_operator.views.pod import AttemptPod, Failure

Workers = Mapping[int, AttemptPod]
"""One attempt's pods by node rank."""

POD_DELETED = "PodDeleted"
STARTUP_TIMEOUT = "StartupTimeout"

_LATEST = datetime.max.replace(tzinfo=UTC)


def by_attempt(pods: Iterable[AttemptPod]) -> dict[int, dict[int, AttemptPod]]:
    """Pods grouped by attempt, then by rank."""
    gangs: dict[int, dict[int, AttemptPod]] = {}
    for pod in pods:
        gangs.setdefault(pod.attempt, {})[pod.rank] = pod
    return gangs


@dataclass(frozen=True)
class Outcome:
    """Where an attempt's gang stands."""

    state: Literal["Pending", "Running", "Succeeded", "Failed", "Missing"]
    failure: Failure = field(default_factory=Failure)
    cause: int = 0
    """The rank that decided a failure (the first to fail, or a missing one)."""
    finished_at: datetime | None = None
    missing: tuple[int, ...] = ()


def outcome(workers: Workers, num_nodes: int) -> Outcome:
    """Failed if any worker failed (the earliest, then the lowest rank, is the cause); Missing
    if a rank has no pod; Succeeded when all exited 0; Running when all run (or are done)."""
    failed = [p for p in workers.values() if p.phase == "Failed"]
    if failed:
        first = min(failed, key=lambda p: (p.finished_at or _LATEST, p.rank))
        return Outcome("Failed", first.failure, first.rank, first.finished_at)
    missing = tuple(r for r in range(num_nodes) if r not in workers)
    if missing:
        return Outcome("Missing", cause=missing[0], missing=missing)
    phases = {p.phase for p in workers.values()}
    if phases == {"Succeeded"}:
        last = max((p.finished_at for p in workers.values() if p.finished_at), default=None)
        return Outcome("Succeeded", workers[0].failure, finished_at=last)
    if phases <= {"Running", "Succeeded"}:
        return Outcome("Running")
    return Outcome("Pending")


def deleted(rank: int, num_nodes: int) -> Failure:
    """A worker that ran and vanished (deleted, evicted and removed): the attempt is lost."""
    who = "its pod" if num_nodes == 1 else f"worker {rank}"
    return Failure(
        reason=POD_DELETED,
        reasons=frozenset({POD_DELETED}),
        message=f"{who} was deleted while running",
    )


def startup_timeout(workers: Workers, num_nodes: int, timeout_s: int, run: str) -> Failure:
    """The failure of an attempt whose workers did not all start in time, saying why not."""
    stuck = []
    for rank in range(num_nodes):
        pod = workers.get(rank)
        if pod is None:
            stuck.append(f"worker {rank}: no pod")
        elif pod.phase == "Pending":
            stuck.append(f"{pod.name}: {pod.waiting or 'pending'}")
    shown = "; ".join(stuck[:4]) + (f"; and {len(stuck) - 4} more" if len(stuck) > 4 else "")
    return Failure(
        reason=STARTUP_TIMEOUT,
        reasons=frozenset({STARTUP_TIMEOUT}),
        message=f"not running {timeout_s} s after the attempt of {run} started: {shown}"[:1024],
    )


def started_at(workers: Workers) -> datetime | None:
    """When the last worker started: the gang runs from then on."""
    return max((p.started_at for p in workers.values() if p.started_at), default=None)


def worker_statuses(workers: Workers, num_nodes: int, run: str, attempt: int) -> list[WorkerStatus]:
    """Every worker's outcome as the attempt ends; those still alive are torn down next."""
    found = []
    for rank in range(num_nodes):
        pod = workers.get(rank)
        name = names.attempt_pod_name(run, attempt, rank, num_nodes)
        if pod is None:
            found.append(WorkerStatus(rank=rank, pod=name, phase="Missing"))
            continue
        done = pod.phase in ("Succeeded", "Failed")
        found.append(
            WorkerStatus(
                rank=rank,
                pod=name,
                phase=pod.phase,
                exit_code=pod.failure.exit_code if done else None,
                reason=pod.failure.reason if done else None,
            )
        )
    return found
