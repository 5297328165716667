"""Which checkpoints of each run are newer than a given one: kept incrementally.

The storage finalizer must never delete a run's newest verified checkpoint (safe deletion).
Answering that by scanning all the run's checkpoints made every deletion O(n), so bulk
deletions were O(n²). Here every verified checkpoint is pushed once into a per-run max-heap
(one over all kinds, one over ``full`` ones) when its watch event arrives; a question pops
stale tops lazily, so it costs O(log n) amortised.

Events can lag the live indexes by a moment, so the heap is only a source of *witnesses*:
each top is re-checked against the live record (``live(name)``) before it counts. A witness
missing from a lagging heap can only make a checkpoint look like the newest, which keeps it:
the safe direction.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.run import RunKey

Live = Callable[[str], CheckpointInfo | None]
"""The live record of a checkpoint by name, or None when it is gone."""
_Entry = tuple[int, int, str]  # (-step, -attempt, name): heapq is a min-heap


class NewestVerified:
    """Per run, the verified checkpoints by (step, attempt), newest first."""

    def __init__(self) -> None:
        self._heaps: dict[tuple[RunKey, bool], list[_Entry]] = {}
        self._pushed: set[tuple[RunKey, bool, str]] = set()

    def note(self, info: CheckpointInfo) -> None:
        """Record a checkpoint as its event shows it (gone or unverified ones drop out lazily)."""
        if not info.verified:
            return
        key = (info.namespace, info.run)
        for full_only in (False, True):
            if full_only and info.kind != "full":
                continue
            if (key, full_only, info.name) not in self._pushed:
                self._pushed.add((key, full_only, info.name))
                entry = (-info.step, -info.attempt, info.name)
                heapq.heappush(self._heaps.setdefault((key, full_only), []), entry)

    def newer_exists(self, ckpt: CheckpointInfo, full_only: bool, live: Live) -> bool:
        """Is a verified checkpoint of ``ckpt``'s run (of kind ``full``) newer than it?"""
        key = (ckpt.namespace, ckpt.run)
        heap = self._heaps.get((key, full_only), [])
        while heap:
            _, _, name = heap[0]
            found = live(name)
            if found is None or not found.verified or (full_only and found.kind != "full"):
                heapq.heappop(heap)
                self._pushed.discard((key, full_only, name))
                continue
            return (found.step, found.attempt) > (ckpt.step, ckpt.attempt)
        return False

    def forget(self, key: RunKey) -> None:
        """Drop a deleted run's heaps."""
        for full_only in (False, True):
            for _, _, name in self._heaps.pop((key, full_only), []):
                self._pushed.discard((key, full_only, name))
