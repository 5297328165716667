"""Which Checkpoint object is *the* record of a checkpoint's files: a pure function.

One checkpoint's files have at most one record. A Checkpoint must be *consistent* — its path
is the store entry its step, attempt, format and kind name — or nothing it says can be trusted
(a step it does not hold would make it the newest, say): it is Invalid (``Mismatch``) and owns
no files. Among consistent Checkpoints of one run naming the same path, the record is the one
named as the SDK and the store scan name it, else the oldest, then the first by name; every
other one is a duplicate: Invalid (``Duplicate``, naming the record). Deleting a Checkpoint that
is not the record deletes that object only, never the files the record owns (safe deletion);
what protects any of them protects the files (:func:`aliases`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ckpt_operator.views.checkpoint import CheckpointInfo

MISMATCH = "Mismatch"
DUPLICATE = "Duplicate"
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class NotRecord:
    """Why a Checkpoint is not the record of any files."""

    reason: str
    message: str
    record: str | None = None
    """The record of the same files, for a duplicate."""


def _same_files(a: CheckpointInfo, b: CheckpointInfo) -> bool:
    return a.run == b.run and a.path == b.path


def _rank(c: CheckpointInfo) -> tuple[bool, datetime, str]:
    return (c.name != c.canonical_name, c.created or _NEVER, c.name)


def record_of(ckpt: CheckpointInfo, siblings: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    """The record of ``ckpt``'s files among ``siblings`` and ``ckpt``; None if inconsistent."""
    if not ckpt.consistent:
        return None
    same = [s for s in siblings if s.consistent and _same_files(s, ckpt) and s.name != ckpt.name]
    return min([ckpt, *same], key=_rank)


def not_record(ckpt: CheckpointInfo, siblings: Iterable[CheckpointInfo]) -> NotRecord | None:
    """None when ``ckpt`` is the record of its files; else why not."""
    record = record_of(ckpt, siblings)
    if record is None:
        described = f"step {ckpt.step} attempt {ckpt.attempt} ({ckpt.format}, {ckpt.kind})"
        expected = ckpt.expected_path
        hint = f" {expected!r}" if expected else " none: the spec is out of range"
        return NotRecord(
            MISMATCH, f"path {ckpt.path!r} is not where {described} is stored, which is{hint}"
        )
    if record.name != ckpt.name:
        return NotRecord(
            DUPLICATE,
            f"{record.name} already records {ckpt.path!r} of run {ckpt.run}; "
            "this object is not a record of those files and deleting it leaves them alone",
            record.name,
        )
    return None


def aliases(ckpt: CheckpointInfo, siblings: Iterable[CheckpointInfo]) -> set[str]:
    """Names of every Checkpoint naming ``ckpt``'s files, ``ckpt`` included."""
    return {ckpt.name} | {s.name for s in siblings if _same_files(s, ckpt)}
