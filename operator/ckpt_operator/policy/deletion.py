"""When a checkpoint's storage may go: a pure function of compact views (safe deletion).

Storage may be deleted only when

* every live consumer of the run has reported a loaded step greater than the checkpoint's step
  (a consumer silent for longer than ``reportTimeoutSeconds`` stops blocking; it is flagged),
* it is not the resume target of a pending or running attempt, and
* it is not the run's newest verified checkpoint (overall, or of kind ``full``: the point the
  next attempt resumes from) —

unless the checkpoint carries ``ckpt.dev/force-delete: "true"``. While the run is gone or
being deleted the resume-target and newest protections lapse (nothing will resume), but
consumers keep blocking. The operator's finalizer, the kubectl plugin's ``--dry-run`` and the
unit tests all call :func:`deletion_blockers`, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from ckpt_operator.policy.consumers import blocking_consumers
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import DEFAULT_REPORT_TIMEOUT_S, RunView


def _key(c: CheckpointInfo) -> tuple[int, int]:
    return (c.step, c.attempt)


def newest_protected(checkpoints: Iterable[CheckpointInfo]) -> set[str]:
    """Names of the run's newest verified checkpoints: the newest verified ``full`` one (the
    point the next attempt resumes from) and, of other kinds, the newest verified overall.

    Terminating checkpoints count: deleting the newest does not make it any less the newest
    until a newer one is verified. Ties (a full save and a weights export of one step) are
    all protected. O(n), for retention and the plugin; the operator's finalizer answers the
    same question per checkpoint in O(log n) with :func:`is_newest`.
    """
    good = [c for c in checkpoints if c.verified]
    top = max((_key(c) for c in good), default=None)
    top_full = max((_key(c) for c in good if c.kind == "full"), default=None)
    return {c.name for c in good if _key(c) == (top_full if c.kind == "full" else top)}


NewerExists = Callable[[bool], bool]
"""``newer_exists(full_only)``: is a verified checkpoint of the run (of kind ``full`` only)
newer than the one asked about?"""


def is_newest(ckpt: CheckpointInfo, newer_exists: NewerExists) -> bool:
    """Is ``ckpt`` one of :func:`newest_protected`'s, given who is newer?"""
    return ckpt.verified and not newer_exists(ckpt.kind == "full")


def deletion_blockers(
    ckpt: CheckpointInfo,
    *,
    run: RunView | None,
    siblings: Iterable[CheckpointInfo],
    consumers: Sequence[ConsumerView],
    now: datetime,
) -> list[str]:
    """:func:`blockers` with the newest protection decided from all the run's checkpoints
    (``siblings``, ``ckpt`` included)."""
    newest = ckpt.name in newest_protected([*siblings, ckpt])
    return blockers(ckpt, run=run, newest=newest, consumers=consumers, now=now)


def blockers(
    ckpt: CheckpointInfo,
    *,
    run: RunView | None,
    newest: bool,
    consumers: Sequence[ConsumerView],
    now: datetime,
) -> list[str]:
    """Why ``ckpt``'s storage must stay; empty means it may be deleted now.

    ``consumers`` are the pods matching the run's consumer selector (the default selector
    when the run is gone); ``newest`` says whether ``ckpt`` is the run's newest verified one.
    """
    if ckpt.force_delete:
        return []
    timeout = run.report_timeout_s if run is not None else DEFAULT_REPORT_TIMEOUT_S
    held = [
        f"consumer {c.name} has loaded step "
        f"{'nothing yet' if c.loaded_step is None else c.loaded_step}, needs > {ckpt.step}"
        for c in blocking_consumers(ckpt.step, consumers, now, timeout)
    ]
    if run is not None and not run.terminating:
        if ckpt.name in run.resume_targets:
            held.append(f"resume target of a pending or running attempt of {run.name}")
        if newest:
            held.append(f"newest Ready checkpoint of {run.name}")
    return held
