"""Which checkpoints a run's retention policy expires: a pure function.

Retention only *marks*: the operator deletes the expired Checkpoint objects, and their storage
goes through the same finalizer and :func:`ckpt_operator.policy.deletion.deletion_blockers` as any
other deletion, so a lagging consumer still holds an expired checkpoint.

Rules, over the run's verified (Ready) checkpoints that are not already being deleted:

* ``keepLast: N`` keeps the N newest (by step, then attempt);
* ``keepEvery: K`` keeps every checkpoint whose step is a multiple of K;
* ``keepBest: {metric, mode, count}`` keeps the ``count`` best by a metric recorded at save time
  (checkpoints without the metric are not candidates for it);
* a checkpoint kept by any rule survives; when at least one of these rules is set, every other
  one expires. With none set, none expires by them.
* the rules apply to each kind on its own: ``keepLast: 3`` keeps the three newest full
  checkpoints *and* the three newest weights exports, so exporting weights after every save
  never leaves fewer full checkpoints to resume from than asked for.
* ``maxBytes`` then caps the survivors' total size: the oldest survivors expire first.

The run's newest Ready checkpoints (see :func:`~ckpt_operator.policy.deletion.newest_protected`) and
current resume targets never expire. Pending and Invalid checkpoints are left alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ckpt_operator.api.models import Retention
from ckpt_operator.policy.deletion import newest_protected
from ckpt_operator.views.checkpoint import CheckpointInfo


@dataclass(frozen=True)
class Expiry:
    checkpoint: CheckpointInfo
    reason: str


def _order(c: CheckpointInfo) -> tuple[int, int, str]:
    return (c.step, c.attempt, c.name)


def expired(
    checkpoints: Iterable[CheckpointInfo],
    retention: Retention | Mapping[str, Any] | None,
    *,
    protected: Collection[str] = (),
) -> list[Expiry]:
    """The checkpoints retention expires, oldest first, each with the rule that expired it."""
    if retention is None:
        return []
    policy = retention if isinstance(retention, Retention) else Retention.model_validate(retention)
    everything = list(checkpoints)
    keep_always = newest_protected(everything) | set(protected)
    candidates = sorted(
        (c for c in everything if c.verified and not c.terminating), key=_order, reverse=True
    )
    kept: set[str] = set(keep_always)
    for kind in {c.kind for c in candidates}:
        kept |= _kept_by_rules(policy, [c for c in candidates if c.kind == kind])
    rules = _rule_names(policy)
    result: list[Expiry] = []
    if rules:
        reason = "not kept by " + ", ".join(rules)
        result += [Expiry(c, reason) for c in candidates if c.name not in kept]
    if policy.max_bytes is not None:
        gone = {e.checkpoint.name for e in result}
        survivors = [c for c in candidates if c.name not in gone]
        total = sum(c.size_bytes or 0 for c in survivors)
        for c in reversed(survivors):  # oldest first
            if total <= policy.max_bytes:
                break
            if c.name in keep_always:
                continue
            total -= c.size_bytes or 0
            result.append(Expiry(c, f"over maxBytes={policy.max_bytes}"))
    return sorted(result, key=lambda e: _order(e.checkpoint))


def _rule_names(policy: Retention) -> list[str]:
    rules = []
    if policy.keep_last is not None:
        rules.append(f"keepLast={policy.keep_last}")
    if policy.keep_every is not None:
        rules.append(f"keepEvery={policy.keep_every}")
    if policy.keep_best is not None:
        best = policy.keep_best
        rules.append(f"keepBest={best.metric}:{best.mode}:{best.count}")
    return rules


def _kept_by_rules(policy: Retention, newest_first: list[CheckpointInfo]) -> set[str]:
    """Names the count and step rules keep among checkpoints of one kind."""
    kept: set[str] = set()
    if policy.keep_last is not None:
        kept |= {c.name for c in newest_first[: policy.keep_last]}
    if policy.keep_every is not None:
        kept |= {c.name for c in newest_first if c.step % policy.keep_every == 0}
    if policy.keep_best is not None:
        best = policy.keep_best
        scored = [c for c in newest_first if best.metric in c.metrics]
        scored.sort(key=lambda c: c.metrics[best.metric], reverse=best.mode == "max")
        kept |= {c.name for c in scored[: best.count]}
    return kept
