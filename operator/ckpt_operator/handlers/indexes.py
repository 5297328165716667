"""Kopf indexes: in-memory views kept current by watch events, so no decision LISTs the API.

A restart's or a deletion's cost must not grow with the number of objects the cluster holds,
so handlers read these (as typed keyword arguments of the same names) instead of listing.
Kopf's callback protocols cannot name such extra keyword arguments, hence the
``type: ignore[arg-type]`` on the decorators of handlers that take an index.
Kopf lists every indexed resource fully before any handler runs, so a freshly started operator
decides on complete indexes (crash convergence).
"""

from __future__ import annotations

from typing import Any, TypeVar

import kopf

from ckpt_operator.api import names
from ckpt_operator.handlers.selectors import ATTEMPT_POD_LABELS, CHECKPOINTS, TRAINING_RUNS
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import AttemptPod, ConsumerView
from ckpt_operator.views.run import RunKey, RunView

_last_view: tuple[tuple[str, str], CheckpointInfo] | None = None


def checkpoint_view(body: kopf.Body) -> CheckpointInfo:
    """The view of a Checkpoint event, made once for the three indexes Kopf calls in turn with
    the same body (keyed by uid and resourceVersion): one object in memory instead of three,
    and a third of the work, for each of 50,000 checkpoints an operator start lists."""
    global _last_view
    meta = body.get("metadata") or {}
    key = (str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""))
    if _last_view is not None and all(key) and _last_view[0] == key:
        return _last_view[1]
    info = CheckpointInfo.from_body(body)  # never raises: a raising index function is retried
    _last_view = key, info
    return info


CheckpointsByRun = kopf.Index[RunKey, CheckpointInfo]
CheckpointsByName = kopf.Index[tuple[str, str], CheckpointInfo]
CheckpointsByFiles = kopf.Index[tuple[str, str, str], CheckpointInfo]
RunsByKey = kopf.Index[RunKey, RunView]
AttemptPods = kopf.Index[RunKey, AttemptPod]
PodsByNamespace = kopf.Index[str, ConsumerView]
ConsumersByRun = kopf.Index[RunKey, ConsumerView]


@kopf.index(*CHECKPOINTS)
async def checkpoints_by_run(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[RunKey, CheckpointInfo]:
    """Every Checkpoint, grouped by its run: ``checkpoints_by_run[(ns, run)]``."""
    info = checkpoint_view(body)
    return {(namespace or "", info.run): info}


@kopf.index(*CHECKPOINTS)
async def checkpoints_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[tuple[str, str], CheckpointInfo]:
    """Every Checkpoint by its name: the live record a deletion decision checks."""
    return {(namespace or "", name): checkpoint_view(body)}


@kopf.index(*CHECKPOINTS)
async def checkpoints_by_files(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[tuple[str, str, str], CheckpointInfo]:
    """Every Checkpoint by the files it names, ``[(ns, run, path)]``: which one is their record
    (``policy.records``) is decided from these alone, not from all the run's checkpoints."""
    info = checkpoint_view(body)
    return {(namespace or "", info.run, info.path): info}


@kopf.index(*TRAINING_RUNS)
async def runs_by_key(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[RunKey, RunView]:
    """Every TrainingRun's store, consumers, retention and live resume targets."""
    return {(namespace or "", name): RunView.from_body(body)}


@kopf.index("pods", labels=ATTEMPT_POD_LABELS)
async def attempt_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[RunKey, AttemptPod] | None:
    """Attempt pods by run: ``attempt_pods[(ns, run)]``; deleted pods drop out."""
    pod = AttemptPod.from_body(body)
    if pod is None:
        return None
    return {(namespace or "", pod.run): pod}


@kopf.index("pods", labels={names.LABEL_CONSUMER_OF: kopf.PRESENT})
async def consumers_by_run(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[RunKey, ConsumerView]:
    """Consumers by the run their default label names: a decision reads only the run's own."""
    return {(namespace or "", str(labels[names.LABEL_CONSUMER_OF])): ConsumerView.from_body(body)}


@kopf.index("pods")
async def pods_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, ConsumerView]:
    """Pods as potential consumers; all of them, since ``consumers.selector`` is arbitrary."""
    return {namespace or "": ConsumerView.from_body(body)}


K = TypeVar("K")
V = TypeVar("V")


def one(index: kopf.Index[K, V], key: K) -> V | None:
    """The single value of an index key, or None (our keys are unique per object name)."""
    values = list(index.get(key, []))
    return values[-1] if values else None
