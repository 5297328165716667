"""Consumer pods and the wake-ups that make their reports unblock deletions fast.

A finalizer held back by a consumer waits *inside* its handler on a per-namespace wake-up
(Kopf's retry delay cannot be cut short by events on other objects, and short retry delays
would patch every blocked checkpoint every second). Pod, TrainingRun and Checkpoint events
notify the namespace; the waiting handlers re-evaluate :func:`deletion_blockers` against the
indexes, which Kopf updates before it calls any event handler. Pods are only ever watched
(``@kopf.index``/``@kopf.on.event``): no finalizer is ever put on a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import conditions
from ckpt_operator.handlers.common import resource
from ckpt_operator.policy.deletion import ConsumerView, RunView, consumers_of, is_silent

POLICY = "policy"
"""Channel: something a blocker depends on changed (a report, an attempt, a newer Ready)."""
GONE = "gone"
"""Channel: a Checkpoint object disappeared (run deletion waits for its checkpoints)."""
CONSUMERS_HEALTHY = "ConsumersHealthy"


class Wakeups:
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


wakeups = Wakeups()

_RECENT_S = 600.0
_recently_deleted: dict[tuple[str, str], float] = {}


def note_deleted(namespace: str, name: str) -> None:
    """Remember a checkpoint whose storage we deleted, so a concurrent store scan that listed
    it a moment earlier does not register a record pointing at nothing."""
    now = time.monotonic()
    _recently_deleted[(namespace, name)] = now
    for key, when in list(_recently_deleted.items()):
        if now - when > _RECENT_S:
            del _recently_deleted[key]


def recently_deleted(namespace: str, name: str) -> bool:
    when = _recently_deleted.get((namespace, name))
    return when is not None and time.monotonic() - when <= _RECENT_S


@kopf.on.event("pods")
async def wake_on_pod_event(namespace: str | None, **_: Any) -> None:
    """A report, a new consumer or a finished one: blocked deletions re-evaluate now."""
    wakeups.notify(namespace or "")


@kopf.on.event(*resource("trainingruns"))
async def wake_on_run_event(namespace: str | None, **_: Any) -> None:
    """An attempt started or ended (resume targets), or the run is being deleted."""
    wakeups.notify(namespace or "")


def run_consumers(run: RunView, pods: Any) -> list[ConsumerView]:
    """The pods matching the run's consumer selector, from ``pods_by_namespace``."""
    found = pods.get(run.namespace, []) if pods is not None else []
    return consumers_of(run.name, run.selector, found)


_flagged: dict[tuple[str, str], set[tuple[str, datetime]]] = {}


def consumer_health(
    body: kopf.Body, run: RunView, pods: Any, status: kopf.Status, now: datetime
) -> dict[str, Any] | None:
    """Flag consumers silent past ``reportTimeoutSeconds``: a Warning Event for each newly
    silent one and ``ConsumersHealthy``; returns the status patch, or None if unchanged."""
    consumers = [c for c in run_consumers(run, pods) if c.live]
    silent = [c for c in consumers if is_silent(c, now, run.report_timeout_s)]
    key = (run.namespace, run.name)
    previous = _flagged.get(key, set())
    current = {(c.name, c.last_report) for c in silent}
    for c in silent:
        if (c.name, c.last_report) not in previous:
            kopf.warn(
                body,
                reason="ConsumerSilent",
                message=f"consumer {c.name} has not reported a loaded step for more than "
                f"{run.report_timeout_s:.0f} s (last at {c.last_report:%Y-%m-%dT%H:%M:%SZ}); "
                "it no longer blocks checkpoint deletion",
            )
    _flagged[key] = current
    metrics.CONSUMERS_SILENT.set(sum(len(v) for v in _flagged.values()))
    old = conditions.get_condition(status.get("conditions"), CONSUMERS_HEALTHY)
    if silent:
        names = ", ".join(sorted(c.name for c in silent))
        want: tuple[conditions.Status, str, str] = (
            "False",
            "ConsumerSilent",
            f"silent past {run.report_timeout_s:.0f} s: {names}",
        )
    elif consumers or old is not None:
        want = ("True", "Reporting", f"{len(consumers)} consumer(s) reporting")
    else:
        return None
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == want:
        return None
    return {
        "conditions": conditions.set_condition(
            status.get("conditions"),
            CONSUMERS_HEALTHY,
            want[0],
            want[1],
            want[2],
            body.meta.get("generation"),
        )
    }
