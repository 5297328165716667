"""Every way one handler wakes another, and the watch events that fire them.

Two mechanisms, for two kinds of waiters:

* :class:`RunWakeups` — one event per run controller (``handlers.runs``): its attempt pods,
  its checkpoints and the run itself wake it, so a restart follows a pod's failure at once.
* :class:`DeletionSignals` — one-shot events per (namespace, channel) for handlers that wait
  *inside* themselves: a finalizer held back by a consumer (Kopf's retry delay cannot be cut
  short by events on other objects) and a run deletion waiting for its checkpoints to go.

Kopf updates every index before it calls any event handler, so a woken waiter re-reads fresh
indexes. Pods are only watched here (``on.event``): no finalizer is ever put on a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import kopf

from ckpt_operator.api import names
from ckpt_operator.handlers.indexes import checkpoint_view
from ckpt_operator.handlers.selectors import CHECKPOINTS, TRAINING_RUNS
from ckpt_operator.views.run import RunKey

if TYPE_CHECKING:
    from ckpt_operator.handlers.runtime import Runtime

CHECKPOINT_COALESCE_S = 0.5
"""Checkpoint changes wake a run controller at most this often (they only refresh status)."""


class RunWakeups:
    """One asyncio.Event per run controller; anything relevant to the run sets it."""

    def __init__(self) -> None:
        self._events: dict[RunKey, asyncio.Event] = {}
        self._later: dict[RunKey, asyncio.TimerHandle] = {}

    def register(self, key: RunKey) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def forget(self, key: RunKey, event: asyncio.Event) -> None:
        if self._events.get(key) is event:
            del self._events[key]

    def kick(self, key: RunKey) -> None:
        """Wake the run's controller; a no-op before it runs (it reconciles when it starts)."""
        event = self._events.get(key)
        if event is not None:
            event.set()

    def kick_soon(self, key: RunKey, delay: float) -> None:
        """Wake the controller within ``delay``, once for any number of calls meanwhile.

        For changes that only refresh status (a checkpoint verified): a run registering
        thousands of checkpoints costs one status write per ``delay``, not one per checkpoint.
        """
        if key in self._later or key not in self._events:
            return

        def fire() -> None:
            self._later.pop(key, None)
            self.kick(key)

        self._later[key] = asyncio.get_running_loop().call_later(delay, fire)


POLICY = "policy"
"""Channel: something a deletion blocker depends on changed (a report, an attempt, a newer
Ready checkpoint)."""
GONE = "gone"
"""Channel: a Checkpoint object disappeared (run deletion waits for its checkpoints)."""


class DeletionSignals:
    """Per (namespace, channel) one-shot events: take one, re-check, then wait on it.

    Taking the event *before* evaluating closes the race with a notification that arrives
    in between: it sets the very event the waiter is about to wait on.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def current(self, namespace: str, channel: str = POLICY) -> asyncio.Event:
        return self._events.setdefault((namespace, channel), asyncio.Event())

    def notify(self, namespace: str, channel: str = POLICY) -> None:
        event = self._events.pop((namespace, channel), None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, seconds: float) -> bool:
        """True when notified, False after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
                return True
        return False


@kopf.on.event("pods")
async def pod_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """A consumer's report, a new or finished consumer, or an attempt pod's progress."""
    ns = namespace or ""
    state = cast("Runtime", memo.runtime)
    state.signals.notify(ns)
    run = labels.get(names.LABEL_RUN)
    if run and names.LABEL_ATTEMPT in labels:
        state.run_wakeups.kick((ns, str(run)))


@kopf.on.event(*TRAINING_RUNS)
async def run_changed(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A spec edit, an attempt started or ended (resume targets), or the run is deleted."""
    ns = namespace or ""
    state = cast("Runtime", memo.runtime)
    state.run_wakeups.kick((ns, name or ""))
    state.signals.notify(ns)


@kopf.on.event(*CHECKPOINTS)
async def checkpoint_changed(
    type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A checkpoint appeared, was verified, invalidated or deleted.

    Its run's ``latestCheckpoint`` may change (coalesced: no restart waits for this, a failed
    pod wakes its run at once); a newer Ready one may release the previous newest (noted in the
    newest-verified heaps first); a gone one may let a run deletion finish.
    """
    ns = namespace or ""
    state = cast("Runtime", memo.runtime)
    if type != "DELETED":
        state.newest.note(checkpoint_view(body))
    state.run_wakeups.kick_soon((ns, str(body.spec.get("run", ""))), CHECKPOINT_COALESCE_S)
    if type == "DELETED":
        state.signals.notify(ns, GONE)
    elif (body.get("status") or {}).get("phase") == "Ready" and not body.meta.get(
        "deletionTimestamp"
    ):
        state.signals.notify(ns)
