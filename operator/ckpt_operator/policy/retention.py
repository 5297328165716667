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

:func:`decide` says this for every checkpoint (``kubectl ckpt gc --plan`` shows it); the
operator acts on :func:`expired`, the decisions that expire.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ckpt_operator.api.models import Retention
from ckpt_operator.policy.deletion import newest_protected
from ckpt_operator.views.checkpoint import CheckpointInfo


@dataclass(frozen=True)
class Expiry:
    checkpoint: CheckpointInfo
    reason: str


@dataclass(frozen=True)
class Decision:
    """What retention does with one checkpoint, and why (``kubectl ckpt gc --plan`` shows it)."""

    checkpoint: CheckpointInfo
    expires: bool
    reason: str


def _order(c: CheckpointInfo) -> tuple[int, int, str]:
    return (c.step, c.attempt, c.name)


Keeps = Callable[[list[CheckpointInfo]], list[CheckpointInfo]]
"""What a rule keeps among the checkpoints of one kind, given newest first."""


def _rules(policy: Retention) -> list[tuple[str, Keeps]]:
    """The keep rules set, each with its name (as reasons show it)."""
    rules: list[tuple[str, Keeps]] = []
    if policy.keep_last is not None:
        last = policy.keep_last
        rules.append((f"keepLast={last}", lambda cs: cs[:last]))
    if policy.keep_every is not None:
        every = policy.keep_every
        rules.append((f"keepEvery={every}", lambda cs: [c for c in cs if c.step % every == 0]))
    if policy.keep_best is not None:
        best = policy.keep_best

        def best_of(newest_first: list[CheckpointInfo]) -> list[CheckpointInfo]:
            scored = [c for c in newest_first if best.metric in c.metrics]
            scored.sort(key=lambda c: c.metrics[best.metric], reverse=best.mode == "max")
            return scored[: best.count]

        rules.append((f"keepBest={best.metric}:{best.mode}:{best.count}", best_of))
    return rules


def decide(
    checkpoints: Iterable[CheckpointInfo],
    retention: Retention | Mapping[str, Any] | None,
    *,
    protected: Collection[str] = (),
) -> list[Decision]:
    """A decision for every checkpoint, oldest first: expired by which rule, or kept by what."""
    policy = Retention.model_validate(retention) if isinstance(retention, Mapping) else retention
    everything = list(checkpoints)
    newest = newest_protected(everything)
    keep_always = newest | set(protected)
    candidates = sorted(
        (c for c in everything if c.verified and not c.terminating), key=_order, reverse=True
    )
    rules = _rules(policy) if policy is not None else []
    kept_by: dict[str, list[str]] = {c.name: [] for c in candidates}
    for kind in sorted({c.kind for c in candidates}):
        same_kind = [c for c in candidates if c.kind == kind]
        for rule, keeps in rules:
            for c in keeps(same_kind):
                kept_by[c.name].append(rule)
    expiry: dict[str, str] = {}
    if rules:
        reason = "not kept by " + ", ".join(rule for rule, _ in rules)
        expiry = {
            c.name: reason for c in candidates if not kept_by[c.name] and c.name not in keep_always
        }
    if policy is not None and policy.max_bytes is not None:
        survivors = [c for c in candidates if c.name not in expiry]
        total = sum(c.size_bytes or 0 for c in survivors)
        for c in reversed(survivors):  # oldest first
            if total <= policy.max_bytes:
                break
            if c.name in keep_always:
                continue
            total -= c.size_bytes or 0
            expiry[c.name] = f"over maxBytes={policy.max_bytes}"

    def kept(c: CheckpointInfo) -> str:
        if c.terminating:
            return "being deleted already"
        if not c.verified:
            return f"{c.phase}: retention expires only Ready checkpoints"
        if c.name in newest:
            return "newest Ready checkpoint"
        if c.name in protected:
            return "resume target of a pending or running attempt"
        if kept_by[c.name]:
            return "kept by " + ", ".join(kept_by[c.name])
        if policy is None or policy.max_bytes is None:
            return "no retention policy"
        return f"within maxBytes={policy.max_bytes}"

    return [
        Decision(c, True, expiry[c.name]) if c.name in expiry else Decision(c, False, kept(c))
        for c in sorted(everything, key=_order)
    ]


def expired(
    checkpoints: Iterable[CheckpointInfo],
    retention: Retention | Mapping[str, Any] | None,
    *,
    protected: Collection[str] = (),
) -> list[Expiry]:
    """The checkpoints retention expires, oldest first, each with the rule that expired it."""
    return [
        Expiry(d.checkpoint, d.reason)
        for d in decide(checkpoints, retention, protected=protected)
        if d.expires
    ]
