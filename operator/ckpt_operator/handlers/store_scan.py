"""What the maintenance timer and run deletion do to a run's store: register and sweep.

Not handlers themselves: the storage and API work both share. A committed checkpoint without a
Checkpoint object (a lost SDK registration) is registered, so nothing is lost; orphans that
:func:`~ckpt_operator.policy.orphans.orphan_kind` names are swept. An entry that resolves
outside the store (a symlink planted there) is never followed: it is skipped and reported, and
the rest of the store is still scanned (confined paths).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ckpt_operator import metrics
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers.indexes import CheckpointsByRun
from ckpt_operator.handlers.runtime import Logger, RecentlyDeleted
from ckpt_operator.kube import client as kube
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.policy.orphans import orphan_kind
from ckpt_operator.storage import layout
from ckpt_operator.storage.manifest import Manifest, VerifyError, scan
from ckpt_operator.storage.store import PathEscapeError, Store, StoreError
from ckpt_operator.views.run import RunView


def _committed(store: Store, entry: str) -> tuple[layout.CheckpointName, Manifest | None] | None:
    """``(name, manifest)`` of a committed entry (no manifest when it cannot be read); None
    for anything else."""
    name = layout.parse_committed(entry)
    if name is None:
        return None
    if name.is_directory and not store.exists(f"{entry}/{layout.MANIFEST_NAME}"):
        return None  # not committed (an s3 directory is committed by its manifest, last)
    try:
        found, _ = scan(store, entry, checksums=False)
    except VerifyError:
        if not store.exists(entry):
            return None  # deleted while we looked
        return name, None  # registered anyway: verification marks it Invalid, visibly
    return name, found


@dataclass
class ScanResult:
    """What one pass over a store did, and the entries it refused to follow."""

    registered: int = 0
    swept: list[str] = field(default_factory=list)
    unsafe: dict[str, str] = field(default_factory=dict)
    """Entry name -> why it was skipped."""


async def register_unknown(
    run: RunView,
    store: Store,
    index: CheckpointsByRun,
    recently_deleted: RecentlyDeleted,
    logger: Logger,
) -> ScanResult:
    """Create a Checkpoint for each committed entry that has none.

    The scan races with the finalizer deleting storage: an entry listed a moment ago may be
    gone now. Right before each create (after the last await) the live index and the set of
    just-deleted names are checked again; the finalizer notes a name as deleted before its
    object can leave the index, so no instant exists at which a deleted checkpoint is in
    neither, and no record pointing at nothing is created.
    """
    key = (run.namespace, run.name)

    def recorded() -> tuple[set[str], set[str]]:
        """Names, and paths a Checkpoint under another name may be the record of (one record
        per files); one found Invalid (created before its files, say) does not count."""
        found = list(index.get(key, []))
        paths = {c.path for c in found if c.consistent and c.phase != "Invalid"}
        return {c.name for c in found}, paths

    def known(object_name: str, path: str) -> bool:
        names, paths = recorded()
        return (
            object_name in names
            or path in paths
            or (run.namespace, object_name) in recently_deleted
        )

    entries = await asyncio.to_thread(store.list_entries)
    snapshot_names, snapshot_paths = recorded()
    result = ScanResult()
    for entry in entries:
        name = layout.parse_committed(entry)
        if name is None:
            continue
        object_name = name.object_name(run.name)
        if object_name in snapshot_names or name.path in snapshot_paths:
            continue
        if known(object_name, name.path):
            continue
        try:
            found = await asyncio.to_thread(_committed, store, entry)
        except PathEscapeError as exc:
            result.unsafe[entry] = exc.reason
            continue
        if found is None or known(object_name, name.path):
            continue
        manifest = found[1]
        body = checkpoint_body(
            run.name,
            name,
            metrics=manifest.metrics if manifest else None,
            owner_uid=run.uid or None,
            world_size=manifest.world_size if manifest else None,
            shards=manifest.shards if manifest else None,
        )
        if await kube.create_checkpoint(run.namespace, body):
            result.registered += 1
            metrics.CHECKPOINTS_REGISTERED.inc()
            logger.info("registered %s found in the store", object_name)
    return result


def _age_s(store: Store, entry: str, now: datetime) -> float:
    try:
        return (now - store.modified(entry)).total_seconds()
    except (StoreError, FileNotFoundError):
        return 0.0


def sweep(
    store: Store,
    run: RunView,
    registered: Collection[str],
    run_deleted: bool,
    config: OperatorConfig,
    logger: Logger,
) -> ScanResult:
    """Remove the orphans :func:`orphan_kind` names (see :mod:`ckpt_operator.policy.orphans`);
    ``registered`` are the run's Checkpoint object names."""
    now = datetime.now(UTC)
    result = ScanResult()
    for entry in store.list_entries():
        try:
            store.resolve(entry)
            kind = orphan_kind(
                entry,
                has_manifest=lambda e: store.exists(f"{e}/{layout.MANIFEST_NAME}"),
                registered=lambda n: n.object_name(run.name) in registered,
                run_deleted=run_deleted,
            )
        except PathEscapeError as exc:
            result.unsafe[entry] = exc.reason
            continue
        if kind is None:
            continue
        if not run_deleted and _age_s(store, entry, now) < config.sweep_grace_s:
            continue  # may be a save in progress
        try:
            size = store.du(entry)
        except (OSError, StoreError):
            size = 0
        dry = "true" if config.sweep_dry_run else "false"
        metrics.ORPHANS_SWEPT.labels(kind, dry).inc()
        metrics.ORPHAN_BYTES_SWEPT.labels(kind, dry).inc(size)
        if config.sweep_dry_run:
            logger.info(
                "orphan sweep (dry run) would remove %s %s (%d bytes)", kind, store.uri(entry), size
            )
            continue
        try:
            store.remove(entry)
        except (OSError, StoreError) as exc:
            logger.warning("orphan sweep could not remove %s: %s", store.uri(entry), exc)
            continue
        logger.info("orphan sweep removed %s %s (%d bytes)", kind, store.uri(entry), size)
        result.swept.append(entry)
    return result
