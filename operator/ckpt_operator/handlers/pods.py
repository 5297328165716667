"""Attempt pods: indexed and watched, never *handled*.

No create/update/resume handler, timer or daemon is registered on pods, so Kopf never puts its
finalizer on them and a pod deletes promptly even while the operator is down. Every change of
an attempt pod updates the :func:`attempt_pods` index and wakes the controller of its run,
which decides from the index alone (no LIST, no GET).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from ckpt_operator.api import names
from ckpt_operator.policy.attempts import AttemptPod

RunKey = tuple[str, str]  # (namespace, run name)

ATTEMPT_LABELS = {names.LABEL_RUN: kopf.PRESENT, names.LABEL_ATTEMPT: kopf.PRESENT}


class Wakeups:
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


wakeups = Wakeups()


@kopf.index("pods", labels=ATTEMPT_LABELS)
async def attempt_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[RunKey, AttemptPod] | None:
    """Attempt pods by run: ``attempt_pods[(ns, run)]``; deleted pods drop out."""
    pod = AttemptPod.from_body(body)
    if pod is None:
        return None
    return {(namespace or "", pod.run): pod}


@kopf.on.event("pods", labels=ATTEMPT_LABELS)
async def attempt_pod_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """The index is already updated when this runs: just wake the run's controller."""
    wakeups.kick((namespace or "", str(labels.get(names.LABEL_RUN, ""))))
