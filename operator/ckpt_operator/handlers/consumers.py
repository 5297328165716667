"""Consumer health, as the maintenance timer reports it on the run.

A consumer silent past ``reportTimeoutSeconds`` stops blocking deletions (safe deletion lets it
lapse so a dead consumer cannot pin storage forever); a person must see that, so each newly
silent consumer gets a Warning event and the run's ``ConsumersHealthy`` condition says who.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.api import conditions
from ckpt_operator.handlers.indexes import ConsumersByRun, PodsByNamespace
from ckpt_operator.handlers.runtime import Runtime
from ckpt_operator.policy.consumers import consumers_of, is_silent
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import RunView

CONSUMERS_HEALTHY = "ConsumersHealthy"


def run_consumers(
    run: RunView, by_run: ConsumersByRun, pods: PodsByNamespace
) -> list[ConsumerView]:
    """The pods matching the run's consumer selector: by its default label straight from
    ``consumers_by_run``; a custom selector is matched against the namespace's pods."""
    if not run.selector:
        return list(by_run.get((run.namespace, run.name), []))
    return consumers_of(run.name, run.selector, pods.get(run.namespace, []))


def consumer_health(
    body: kopf.Body,
    run: RunView,
    consumers: list[ConsumerView],
    status: kopf.Status,
    now: datetime,
    state: Runtime,
) -> dict[str, Any] | None:
    """Flag consumers silent past ``reportTimeoutSeconds``: a Warning Event for each newly
    silent one and ``ConsumersHealthy``; returns the status patch, or None if unchanged."""
    consumers = [c for c in consumers if c.live]
    silent = [c for c in consumers if is_silent(c, now, run.report_timeout_s)]
    key = (run.namespace, run.name)
    previous = state.flagged.get(key, set())
    for c in silent:
        if (c.name, c.last_report) not in previous:
            kopf.warn(
                body,
                reason="ConsumerSilent",
                message=f"consumer {c.name} has not reported a loaded step for more than "
                f"{run.report_timeout_s:.0f} s (last at {c.last_report:%Y-%m-%dT%H:%M:%SZ}); "
                "it no longer blocks checkpoint deletion",
            )
    state.flagged[key] = {(c.name, c.last_report) for c in silent}
    metrics.CONSUMERS_SILENT.set(sum(len(v) for v in state.flagged.values()))
    old = conditions.get_condition(status.get("conditions"), CONSUMERS_HEALTHY)
    if silent:
        who = ", ".join(sorted(c.name for c in silent))
        want: tuple[conditions.Status, str, str] = (
            "False",
            "ConsumerSilent",
            f"silent past {run.report_timeout_s:.0f} s: {who}",
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
