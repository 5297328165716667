"""Deleting a TrainingRun: its checkpoints first, through their own finalizer, then the rest.

Each checkpoint is deleted through the storage-protection finalizer (the run's newest and
resume-target protections lapse, nothing will resume; consumers still block), and the run's
finalizer waits until all are gone, so the store URI and credentials stay known until the last
file is deleted. Then committed entries nobody registered and leftovers are swept.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf

from ckpt_operator import metrics
from ckpt_operator.handlers.consumers import run_consumers
from ckpt_operator.handlers.indexes import CheckpointsByRun, ConsumersByRun, PodsByNamespace
from ckpt_operator.handlers.maintenance import report_unsafe
from ckpt_operator.handlers.runtime import Logger, Runtime, runtime
from ckpt_operator.handlers.selectors import TRAINING_RUNS
from ckpt_operator.handlers.store_scan import sweep
from ckpt_operator.handlers.wakeups import GONE, DeletionSignals
from ckpt_operator.kube import client as kube
from ckpt_operator.policy.consumers import blocking_consumers
from ckpt_operator.storage import layout
from ckpt_operator.storage.open import open_store
from ckpt_operator.storage.store import StoreError
from ckpt_operator.views.run import RunKey, RunView


@kopf.on.delete(*TRAINING_RUNS, id="delete-checkpoints")  # type: ignore[arg-type]  # see indexes
async def delete_checkpoints(
    body: kopf.Body,
    memo: kopf.Memo,
    checkpoints_by_run: CheckpointsByRun,
    consumers_by_run: ConsumersByRun,
    pods_by_namespace: PodsByNamespace,
    logger: Logger,
    **_: Any,
) -> None:
    """Delete the run's checkpoints through their finalizer; wait until all are gone."""
    run = RunView.from_body(body)
    state = runtime(memo)
    key = (run.namespace, run.name)
    requested: set[str] = set()
    while True:
        gone = state.signals.current(run.namespace, GONE)
        remaining = list(checkpoints_by_run.get(key, []))
        if not remaining:
            break
        for c in remaining:
            if not c.terminating and c.name not in requested:
                await kube.delete_checkpoint(run.namespace, c.name)
                requested.add(c.name)
        await DeletionSignals.wait(gone, 10.0)
    metrics.forget_run(run.namespace, run.name)
    try:
        store = await open_store(
            run.namespace, run.store_uri, run.secret_name, memo.config.allowed_roots
        )
    except StoreError as exc:
        logger.warning("store of run %s not swept: %s", run.name, exc)
        _forget(state, key)
        return
    entries = await asyncio.to_thread(store.list_entries)
    consumers = run_consumers(run, consumers_by_run, pods_by_namespace)
    now = datetime.now(UTC)
    held = [
        e
        for e in entries
        if (n := layout.parse_committed(e)) is not None
        and blocking_consumers(n.step, consumers, now, run.report_timeout_s)
    ]
    if held:
        raise kopf.TemporaryError(
            f"unregistered checkpoints {', '.join(held)} still held by consumers", delay=10
        )
    swept = await asyncio.to_thread(sweep, store, run, set(), True, memo.config, logger)
    report_unsafe(body, swept.unsafe, state.unsafe.pop(key, set()))
    _forget(state, key)


def _forget(state: Runtime, key: RunKey) -> None:
    state.forget(key)
    metrics.CONSUMERS_SILENT.set(sum(len(v) for v in state.flagged.values()))
