"""A distributed save is one checkpoint: every rank writes its files, rank 0 commits.

Protocol (over the SDK's private gloo group, :mod:`ckpt_operator.sdk.collective`):

1. Rank 0 checks the name is free, creates the temporary directory (file://) and broadcasts
   its unique id, or the error that stopped it, so every rank fails alike.
2. Every rank writes its files under ``rank-NNNNN/`` in that directory (s3: under the final
   prefix), fsyncs them and its sub-directory.
3. The ranks all-gather their file entries (size + xxh3 checksum) or their error.
4. Rank 0 writes one manifest listing every rank's files and commits with the same single
   atomic step as a single-process save (rename; s3: manifest last), or aborts when any rank
   failed, then broadcasts the outcome so every rank returns or raises alike.

A rank that dies makes the collectives of the others raise (the group has a timeout): rank 0
aborts, the others raise, nothing is committed. If rank 0 itself dies the temporary directory
stays behind as an ordinary temporary, which the operator's orphan sweep removes. Tar is a
single-writer format (one stream), so it is refused for more than one rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ckpt_operator.sdk.collective import Collective
from ckpt_operator.sdk.state import MODEL_FILE, StateError, load_state, load_tensors, read_files
from ckpt_operator.sdk.tensorfile import TensorFileError
from ckpt_operator.sdk.writer import Files, Sink, open_sink, prepare
from ckpt_operator.storage.layout import CheckpointName, parse_committed
from ckpt_operator.storage.manifest import (
    FileEntry,
    Manifest,
    ManifestMissingError,
    UnreadableError,
    VerifyError,
    read_manifest,
)
from ckpt_operator.storage.store import Store, StoreError

Loaded = tuple[int, dict[str, torch.Tensor] | None, dict[str, Any]]
"""A full checkpoint's step, model state dict and ``state.json`` document."""


class ShardedSaveError(StoreError):
    """A rank could not write its shard (or could not start); nothing was committed."""


def shard_prefix(rank: int) -> str:
    """Where a rank's files live inside a distributed checkpoint."""
    return f"rank-{rank:05d}/"


def check_writable(fmt: str, ranks: int) -> None:
    """Refuse a format several ranks cannot write into one checkpoint (each rank decides
    alone, before any collective, so all of them fail with this message)."""
    if fmt != "dir":
        raise ValueError(
            f"format {fmt!r} cannot be written by {ranks} ranks: a tar is one "
            "stream from one writer; use format 'dir' (or 'dcp')"
        )


def write_sharded(
    coll: Collective,
    store: Store,
    name: CheckpointName,
    files: Files,
    *,
    run: str,
    metrics: Mapping[str, float] | None = None,
    error: str | None = None,
) -> Manifest | None:
    """Write this rank's ``files`` into the one checkpoint ``name``; rank 0 commits it.

    Returns the manifest on rank 0, None on the others; raises on every rank when the
    checkpoint was not committed. A rank whose state could not be staged passes ``error``
    instead of files, so the others fail with it rather than wait for its shard.
    """
    check_writable(name.format, coll.size)
    if coll.is_leader:
        try:
            unique = prepare(store, name)
            sink = open_sink(store, name, unique)
        except Exception as exc:
            coll.broadcast({"error": f"rank 0: {exc}"})
            raise
        try:
            coll.broadcast({"unique": unique})
        except BaseException:
            sink.abort()
            raise
    else:
        setup = coll.broadcast(None)
        if "error" in setup:
            raise ShardedSaveError(f"{store.uri(name.path)} not started: {setup['error']}")
        sink = open_sink(store, name, setup["unique"], create=False)
    return _write_and_commit(coll, sink, name, files, run=run, metrics=metrics, error=error)


def _write_and_commit(
    coll: Collective,
    sink: Sink,
    name: CheckpointName,
    files: Files,
    *,
    run: str,
    metrics: Mapping[str, float] | None,
    error: str | None,
) -> Manifest | None:
    prefix = shard_prefix(coll.rank)
    try:
        if error is not None:
            raise ShardedSaveError(error)
        entries = [sink.add(prefix + f, pieces, size) for f, (pieces, size) in files.items()]
        sink.flush()
        mine: dict[str, object] = {"files": [e.model_dump() for e in entries]}
    except Exception as exc:
        mine = {"error": f"rank {coll.rank}: {exc}"}
    manifest = None
    committed = False
    try:
        gathered = coll.all_gather(mine)
        outcome = None
        if coll.is_leader:
            errors = [str(g["error"]) for g in gathered if "error" in g]
            if errors:
                sink.abort()
                outcome = {"error": "; ".join(errors)}
            else:
                manifest = _manifest(name, gathered, run, metrics, coll.size)
                sink.commit(manifest.to_bytes())
                committed = True
                outcome = {"digest": manifest.digest}
        outcome = coll.broadcast(outcome)
    except BaseException:
        if coll.is_leader and not committed:
            sink.abort()
        raise
    if "error" in outcome:
        raise ShardedSaveError(f"checkpoint {name.path} not committed: {outcome['error']}")
    return manifest


def _manifest(
    name: CheckpointName,
    gathered: list[dict[str, object]],
    run: str,
    metrics: Mapping[str, float] | None,
    world_size: int,
) -> Manifest:
    entries = [FileEntry.model_validate(e) for g in gathered for e in g["files"]]  # type: ignore[attr-defined]
    return Manifest.build(
        run=run,
        step=name.step,
        attempt=name.attempt,
        kind=name.kind,
        format=name.format,
        files=sorted(entries, key=lambda e: e.path),
        metrics=dict(metrics or {}),
        world_size=world_size,
        shards=world_size,
    )


@dataclass(frozen=True)
class Outcome:
    """One rank's verdict on a resume candidate; the ranks agree on the worst of them."""

    ok: bool
    reason: str = ""
    invalid: bool = False
    """Proven not to match its manifest: rank 0 asks the operator to verify it again."""
    unreadable: bool = False
    """It could not be read (permission, timeout, a file not found): worth retrying, and
    never evidence that the candidate is bad."""
    fatal: bool = False
    """The job cannot use it at all (e.g. another world size): every rank raises."""


def agree(coll: Collective | None, outcome: Outcome) -> Outcome:
    """The group's verdict: ok only when every rank's is; else every failing rank's reason."""
    if coll is None:
        return outcome
    views = [Outcome(**v) for v in coll.all_gather(asdict(outcome))]
    bad = [(rank, v) for rank, v in enumerate(views) if not v.ok]
    if not bad:
        return outcome
    return Outcome(
        ok=False,
        reason="; ".join(f"rank {rank}: {v.reason}" for rank, v in bad),
        invalid=any(v.invalid for _, v in bad),
        unreadable=any(v.unreadable for _, v in bad),
        fatal=any(v.fatal for _, v in bad),
    )


def load_part(
    store: Store, uri: str, coll: Collective | None, *, verify: bool
) -> tuple[Outcome, Loaded | None]:
    """This rank's part of native checkpoint ``uri``: its own shard, or all of a checkpoint a
    single process wrote (every rank loads that one). Never raises for a bad candidate."""
    try:
        rel = store.rel_from_uri(uri)
        store.resolve(rel)  # an entry that is a symlink out of the store is never read
    except StoreError as exc:
        return Outcome(False, str(exc)), None
    name = parse_committed(rel)
    if name is None:
        return Outcome(False, "not a committed checkpoint name"), None
    if name.format == "dcp" or name.kind != "full":
        return Outcome(False, f"a {name.format} {name.kind} checkpoint; not loaded here"), None
    world = 1 if coll is None else coll.size
    try:
        saved = (read_manifest(store, rel).world_size or 1) if name.is_directory else 1
        if saved not in (1, world):
            reason = (
                f"written by {saved} ranks, this job has {world}: native checkpoints do "
                "not reshard (save with format dcp to reshard)"
            )
            return Outcome(False, reason, fatal=True), None
        prefix = shard_prefix(coll.rank) if coll is not None and saved > 1 else ""
        _, buffers = read_files(store, rel, verify=verify, prefix=prefix)
        doc = load_state(buffers)
        model_file = buffers.get(MODEL_FILE)
        model_state = None if model_file is None else load_tensors(model_file, MODEL_FILE)
    except (UnreadableError, ManifestMissingError) as exc:  # missing is not damaged
        return Outcome(False, str(exc), unreadable=True), None
    except (VerifyError, TensorFileError, StateError, ValueError, KeyError) as exc:
        return Outcome(False, str(exc), invalid=True), None
    except StoreError as exc:  # a manifest that is a symlink out of the store
        return Outcome(False, str(exc)), None
    except OSError as exc:  # reading the manifest: permission, timeout, connection
        return Outcome(False, f"{uri}: cannot be read ({exc})", unreadable=True), None
    return Outcome(True), (int(doc["step"]), model_state, doc)
