"""The record of a test's history the invariant checker judges: observations and verdicts.

Plus small readers of raw object bodies (as the watch delivers them), shared by the checker
(:mod:`.invariants`), the end-state checks (:mod:`.convergence`) and the chaos driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.storage import layout

SAFE_DELETION, VERIFIED_RESUME, NEWEST_RESUME = "safe deletion", "verified resume", "newest resume"
CRASH_CONVERGENCE, CONFINED_PATHS, ATOMIC_COMMIT = (
    "crash convergence",
    "confined paths",
    "atomic commit",
)
PODS, CHECKPOINTS, RUNS = "pods", names.CHECKPOINTS, names.TRAINING_RUNS
STORE, CANARY = "store", "canary"
COMMITTED, GONE = "COMMITTED", "GONE"
DEFAULT_LAG_S = 3.0
"""How far the operator's view may trail the API server's when it picks a resume point."""
SILENCE_SLACK_S = 2.0
"""Consumers within this of ``reportTimeoutSeconds`` count as silent (report times are whole
seconds, and the operator looks at its own clock)."""
Body = Mapping[str, Any]
Key = tuple[int, int]


@dataclass(frozen=True)
class Record:
    """One observation: a watch event (``kind`` a plural) or a store/canary change."""

    revision: int
    kind: str
    type: str
    body: Body
    at: float
    """Wall-clock seconds (``time.time()``) when it was observed."""
    seq: int = 0
    relisted: bool = False
    """Made up from a relist after a watch gap: what happened to the object in between is
    unknown, and ``at`` is when the gap closed. On a store record: seen while a watch was
    down, so the object's side of the change may not be known yet."""

    @property
    def order(self) -> tuple[int, int, int]:
        """Store observations follow the object events of the revision read after them."""
        return (self.revision, int(self.kind in (STORE, CANARY)), self.seq)


@dataclass(frozen=True)
class Violation:
    invariant: str
    revision: int
    message: str
    objects: tuple[str, ...] = ()

    def __str__(self) -> str:
        objects = ", ".join(self.objects)
        return f"[{self.invariant}] revision {self.revision}: {self.message} ({objects})"


def meta(body: Body) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def terminating(body: Body) -> bool:
    return bool(meta(body).get("deletionTimestamp"))


def phase(body: Body) -> str:
    return str((body.get("status") or {}).get("phase") or "")


def ckpt_key(body: Body) -> Key:
    return (int(body["spec"]["step"]), int(body["spec"]["attempt"]))


def verified(body: Body) -> bool:
    """Ready, or passed verification before its deletion began."""
    conds = (body.get("status") or {}).get("conditions") or []
    was = any(c.get("type") == "Verified" and c.get("status") == "True" for c in conds)
    return phase(body) == "Ready" or (phase(body) == "Deleting" and was)


def usable(body: Body) -> bool:
    """May an attempt resume from it: a full checkpoint, Ready, not Terminating."""
    full = (body.get("spec") or {}).get("kind", "full") == "full"
    return full and phase(body) == "Ready" and not terminating(body)


def attempt_of(pod: Body) -> tuple[str, int, int] | None:
    """``(run, attempt, rank)`` of an attempt pod."""
    labels = meta(pod).get("labels") or {}
    run, attempt = labels.get(names.LABEL_RUN), str(labels.get(names.LABEL_ATTEMPT, ""))
    if not run or not attempt.isdigit():
        return None
    return str(run), int(attempt), int(labels.get(names.LABEL_NODE_RANK, 0))


def live(pod: Body) -> bool:
    return phase(pod) not in ("Succeeded", "Failed")


def resume_of(pod: Body, run: str) -> tuple[str, Key] | None:
    """The Checkpoint object a worker's ``CKPT_RESUME_FROM`` names, with its (step, attempt)."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    env = {e.get("name"): e.get("value") for e in containers[0].get("env") or []}
    parsed = layout.parse_committed(env.get(names.ENV_RESUME_FROM) or "")
    if not env.get(names.ENV_RESUME_FROM) or parsed is None:
        return None
    return parsed.object_name(run), (parsed.step, parsed.attempt)
