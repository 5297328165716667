"""Which store entries are orphans the sweep may remove: a pure classification.

Readers ignore everything uncommitted (atomic commit), so leftovers of crashed saves are
garbage, but young ones may be a save still in progress, so only those older than the grace
period go. When the run itself is being deleted, everything it left goes at once: leftovers of
any age and committed checkpoints nobody registered (no Checkpoint object protects them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ckpt_operator.storage import layout

OrphanKind = Literal["temporary", "uncommitted", "unregistered"]


def orphan_kind(
    entry: str,
    *,
    has_manifest: Callable[[str], bool],
    registered: Callable[[layout.CheckpointName], bool],
    run_deleted: bool,
) -> OrphanKind | None:
    """What kind of orphan ``entry`` (a name directly under the store root) is, if any.

    ``has_manifest`` (a storage read) is asked only for entries named like committed
    directories; ``registered`` only while the run is being deleted.
    """
    if layout.is_temporary(entry):
        return "temporary"
    name = layout.parse_committed(entry)
    if name is None:
        return None  # not ours: never touched
    if name.is_directory and not has_manifest(entry):
        return "uncommitted"
    if run_deleted and not registered(name):
        return "unregistered"
    return None
