"""The state handlers share while the operator runs, kept in Kopf's memo.

Kopf gives every handler a shallow copy of the operator's memo, so the one :class:`Runtime`
put there at startup is shared by all of them, and a fresh operator (or a test starting one in
the same process) starts from a fresh one: nothing leaks between runs through module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import takewhile
from typing import Any, cast

import kopf

from ckpt_operator import metrics
from ckpt_operator.handlers.wakeups import DeletionSignals, RunWakeups
from ckpt_operator.views.newest import NewestVerified
from ckpt_operator.views.pod import AttemptPod
from ckpt_operator.views.run import RunKey, RunView

RECENT_S = 600.0
VERIFY_CONCURRENCY = 16
"""Verifications in flight at once. A backlog (thousands registered while the operator was
busy or down) then waits here instead of in the API client's connection pool, where the
request timeout ran out, each timeout cost Kopf a retry and a patch, and the watch fell behind
until the API server closed it (and Kopf listed everything again)."""

Logger = logging.Logger | logging.LoggerAdapter[Any]
"""What Kopf passes handlers as ``logger``."""


class RecentlyDeleted:
    """Checkpoints whose storage was just deleted, so a concurrent store scan that listed one
    a moment earlier does not register a record pointing at nothing."""

    def __init__(self, keep_s: float = RECENT_S) -> None:
        self.keep_s = keep_s
        self._when: dict[tuple[str, str], float] = {}

    def note(self, namespace: str, name: str) -> None:
        """Remember one deletion and forget expired ones. The dict stays in time order (a
        name noted again moves to the end), so only expired entries at its front are visited:
        10,000 deletions in a row no longer scan each other (a twentieth of the operator's
        CPU while it deleted them)."""
        now = time.monotonic()
        self._when.pop((namespace, name), None)
        self._when[(namespace, name)] = now
        expired = takewhile(lambda item: now - item[1] > self.keep_s, self._when.items())
        for key in [key for key, _ in expired]:
            del self._when[key]

    def __contains__(self, key: tuple[str, str]) -> bool:
        when = self._when.get(key)
        return when is not None and time.monotonic() - when <= self.keep_s


@dataclass
class Runtime:
    """Shared run-time state of one operator process."""

    run_wakeups: RunWakeups = field(default_factory=RunWakeups)
    signals: DeletionSignals = field(default_factory=DeletionSignals)
    recently_deleted: RecentlyDeleted = field(default_factory=RecentlyDeleted)
    newest: NewestVerified = field(default_factory=NewestVerified)
    last_scan: dict[RunKey, float] = field(default_factory=dict)
    """When each run's store was last scanned (monotonic seconds)."""
    flagged: dict[RunKey, set[tuple[str, datetime]]] = field(default_factory=dict)
    """Consumers already reported silent, with the report time they fell silent at."""
    unsafe: dict[RunKey, set[str]] = field(default_factory=dict)
    """Store entries already reported as escaping the store."""
    bad_reports: dict[RunKey, set[tuple[str, str]]] = field(default_factory=dict)
    """Consumers already reported for an unparseable loaded step, with that value."""
    store_errors: dict[RunKey, str] = field(default_factory=dict)
    """Why each run's store could not be scanned, as last reported."""
    resume_claims: dict[RunKey, frozenset[str]] = field(default_factory=dict)
    """Resume targets of each run's live attempts as its controller last decided them, before
    the status saying so is written and watched back: a finalizer reading only the run's
    status could delete a target the controller has just chosen (see :meth:`protected`)."""
    verifying: set[tuple[str, str]] = field(default_factory=set)
    """Checkpoints whose verification this process has started or queued: no stall."""
    verify_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(VERIFY_CONCURRENCY)
    )
    indexed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once Kopf has listed every index (handlers run only then): admission waits for it."""

    def forget(self, key: RunKey) -> None:
        """Drop what is kept about a deleted run, so nothing of it outlives it."""
        for per_run in (self.last_scan, self.flagged, self.unsafe, self.bad_reports):
            per_run.pop(key, None)
        self.resume_claims.pop(key, None)
        self.store_errors.pop(key, None)
        self.newest.forget(key)

    @contextlib.asynccontextmanager
    async def verification(self, namespace: str, name: str) -> AsyncIterator[None]:
        """One of :data:`VERIFY_CONCURRENCY` verification slots, known as queued meanwhile."""
        key = (namespace, name)
        self.verifying.add(key)
        metrics.VERIFICATIONS_PENDING.inc()
        try:
            async with self.verify_slots:
                yield
        finally:
            self.verifying.discard(key)
            metrics.VERIFICATIONS_PENDING.dec()

    def protected(self, run: RunView, pods: Iterable[AttemptPod]) -> RunView:
        """``run`` with every live resume target: those its status records, those its
        controller has chosen but not yet recorded, and those its live workers were created
        with (a status write lost to a crash). Decisions and writes interleave at awaits;
        these three together leave no window in which a chosen target is unprotected."""
        in_pods = {
            p.resumed_from.name
            for p in pods
            if p.resumed_from is not None and p.live and not p.terminating
        }
        claimed = self.resume_claims.get((run.namespace, run.name), frozenset())
        targets = run.resume_targets | claimed | in_pods
        return run if targets == run.resume_targets else replace(run, resume_targets=targets)


def runtime(memo: kopf.Memo) -> Runtime:
    """The operator's shared state (set up by the startup handler)."""
    return cast(Runtime, memo.runtime)
