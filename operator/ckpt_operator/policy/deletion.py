"""When a checkpoint's storage may go: a pure function of compact views (safe deletion).

Storage may be deleted only when

* every live consumer of the run has reported a loaded step greater than the checkpoint's step
  (a consumer silent for longer than ``reportTimeoutSeconds`` stops blocking; it is flagged),
* it is not the resume target of a pending or running attempt, and
* it is not the run's newest verified checkpoint (overall, or of kind ``full``: the point the
  next attempt resumes from) —

unless the checkpoint carries ``ckpt.dev/force-delete: "true"``. The last two hold through any
Checkpoint naming the same files (see :mod:`ckpt_operator.policy.records`). While the run is
gone or being deleted the resume-target and newest protections lapse (nothing will resume),
but consumers keep blocking. The operator's finalizer, the kubectl plugin's ``--dry-run`` and the
unit tests all call :func:`deletion_blockers`, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from ckpt_operator.policy.consumers import blocking_consumers
from ckpt_operator.policy.records import aliases
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import DEFAULT_REPORT_TIMEOUT_S, RunView


def _newest(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    return max(checkpoints, key=lambda c: (c.step, c.attempt), default=None)


def newest_protected(checkpoints: Iterable[CheckpointInfo]) -> set[str]:
    """Names of the run's newest verified checkpoint and newest verified ``full`` one.

    Terminating checkpoints count: deleting the newest does not make it any less the newest
    until a newer one is verified.
    """
    good = [c for c in checkpoints if c.verified]
    picks = (_newest(good), _newest(c for c in good if c.kind == "full"))
    return {c.name for c in picks if c is not None}


def deletion_blockers(
    ckpt: CheckpointInfo,
    *,
    run: RunView | None,
    siblings: Iterable[CheckpointInfo],
    consumers: Sequence[ConsumerView],
    now: datetime,
) -> list[str]:
    """Why ``ckpt``'s storage must stay; empty means it may be deleted now.

    ``consumers`` are the pods matching the run's consumer selector (the default selector
    when the run is gone); ``siblings`` are all checkpoints of the run, ``ckpt`` included.
    """
    if ckpt.force_delete:
        return []
    timeout = run.report_timeout_s if run is not None else DEFAULT_REPORT_TIMEOUT_S
    blockers = [
        f"consumer {c.name} has loaded step "
        f"{'nothing yet' if c.loaded_step is None else c.loaded_step}, needs > {ckpt.step}"
        for c in blocking_consumers(ckpt.step, consumers, now, timeout)
    ]
    if run is not None and not run.terminating:
        everything = [*siblings, ckpt]
        # Another Checkpoint naming the same files (a duplicate) protects them too.
        names = aliases(ckpt, everything)
        if names & run.resume_targets:
            blockers.append(f"resume target of a pending or running attempt of {run.name}")
        if names & newest_protected(everything):
            blockers.append(f"newest Ready checkpoint of {run.name}")
    return blockers
