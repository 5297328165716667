"""Saving and restoring DCP checkpoints for a :class:`CheckpointManager`: the collective parts.

Save: rank 0 checks the name is free and broadcasts the temporary id; every rank then runs
``dcp.save`` (or ``dcp.async_save``) with a :class:`~ckpt_operator.sdk.dcp.CheckpointWriter`
over a gloo group of the SDK's own, and rank 0's ``finish`` commits and registers. Restore:
for each candidate every rank runs ``dcp.load`` with a verifying reader (DCP reshards to this
job's world size); DCP carries each rank's failure to all ranks, and the SDK's group then agrees
explicitly, so all ranks load the same candidate or all move on, and only rank 0 asks the
operator to verify a damaged one again.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ckpt_operator.sdk.collective import Collective
from ckpt_operator.sdk.dcp import CheckpointReader, CheckpointWriter
from ckpt_operator.sdk.manager import CandidatesUnreadableError
from ckpt_operator.sdk.registry import CheckpointRecord
from ckpt_operator.sdk.sharded import Outcome
from ckpt_operator.sdk.writer import prepare
from ckpt_operator.storage.layout import CheckpointName, parse_committed
from ckpt_operator.storage.manifest import (
    Manifest,
    ManifestError,
    ManifestMissingError,
    UnreadableError,
    VerifyError,
    read_manifest,
)
from ckpt_operator.storage.store import StoreError

if TYPE_CHECKING:
    from ckpt_operator.sdk.manager import CheckpointManager

_BAD_DATA = (VerifyError, ManifestError, pickle.UnpicklingError)
"""Failures that prove a candidate damaged (access errors are retried; the rest: raised)."""


class PartlyLoadedError(RuntimeError):
    """A candidate failed after loading had begun writing into the state dict, and no other
    candidate loaded: the state is partly overwritten, so it must not be trained on as if
    starting from scratch. Rebuild the state (or restart the process) and restore again."""


def _dist_args(coll: Collective | None) -> dict[str, Any]:
    return {"process_group": None if coll is None else coll.dcp_group, "no_dist": coll is None}


def save(
    manager: CheckpointManager,
    step: int,
    state_dict: dict[str, Any],
    *,
    metrics: Mapping[str, float] | None = None,
    blocking: bool = True,
    **options: Any,
) -> str | Future[Any]:
    """Save ``state_dict`` as DCP checkpoint ``step``; the URI, or DCP's future when not
    ``blocking``. ``options`` go to the writer (``thread_count``, …) or ``planner``."""
    manager.wait()  # native async saves use the same group
    coll = manager.collective()
    name = CheckpointName(step, manager.attempt, "dcp")
    setup = None
    if coll is None or coll.is_leader:
        try:
            setup = {"unique": prepare(manager.store, name)}
        except StoreError as exc:
            setup = {"error": str(exc)}
    if coll is not None:
        setup = coll.broadcast(setup)
    assert setup is not None
    if "error" in setup:
        raise StoreError(f"DCP checkpoint {name.path} not started: {setup['error']}")

    def registered(manifest: Manifest) -> None:
        if manager.registry is not None:
            record = CheckpointRecord(
                manager.run, name, manifest.metrics, manifest.world_size, manifest.shards
            )
            manager.registry.register(record)

    planner = options.pop("planner", None)
    writer = CheckpointWriter(
        manager.store, name, setup["unique"], run=manager.run, metrics=metrics,
        on_commit=registered, **options,
    )  # fmt: skip
    args = {"storage_writer": writer, "planner": planner, **_dist_args(coll)}

    def clean_up() -> None:
        if coll is None or coll.is_leader:
            manager.store.remove(writer.tmp)  # gone already once committed

    if not blocking:
        future = async_save(state_dict, **args)
        assert isinstance(future, Future)

        def settled(done: Future[Any]) -> None:
            if done.exception() is not None:
                clean_up()

        future.add_done_callback(settled)
        return future
    try:
        dcp_save(state_dict, **args)
    except BaseException:
        clean_up()
        raise
    return manager.store.uri(name.path)


def restore(
    manager: CheckpointManager, state_dict: dict[str, Any], *, planner: Any = None
) -> int | None:
    """Load the newest DCP candidate that verifies into ``state_dict`` (in place, resharded to
    this job's ranks) and return its step; None when none does (``state_dict`` untouched).

    A candidate that fails after loading began writing into ``state_dict`` (a shard damaged
    after others loaded) is skipped like any other; if then none loads,
    :class:`PartlyLoadedError` is raised instead of returning None, since the state is no
    longer the fresh one the caller would start from."""
    manager.wait()
    coll = manager.collective()
    unreadable: dict[str, str] = {}
    overwritten: dict[str, str] = {}  # candidates that failed after writing into state_dict
    for uri in manager.candidates():
        wrote: list[bool] = []
        read = partial(_load, manager, uri, state_dict, coll, planner, wrote)
        outcome, _ = manager.read_candidate(uri, read)
        if outcome.fatal:
            raise ValueError(f"cannot resume from {uri}: {outcome.reason}")
        if not outcome.ok:
            if outcome.unreadable:
                unreadable[uri] = outcome.reason
            if any(wrote):
                overwritten[uri] = outcome.reason
            manager.reject(uri, outcome)
            continue
        name = parse_committed(uri)
        assert name is not None
        return name.step
    if overwritten:
        listed = "; ".join(f"{uri}: {reason}" for uri, reason in overwritten.items())
        raise PartlyLoadedError(
            f"no candidate loaded, and the state dict is partly overwritten by: {listed}"
        )
    if unreadable:
        raise CandidatesUnreadableError(unreadable)
    return None


def _load(
    manager: CheckpointManager,
    uri: str,
    state_dict: dict[str, Any],
    coll: Collective | None,
    planner: Any,
    wrote: list[bool],
) -> tuple[Outcome, None]:
    return _outcome(manager, uri, state_dict, coll, planner, wrote), None


def _outcome(
    manager: CheckpointManager,
    uri: str,
    state_dict: dict[str, Any],
    coll: Collective | None,
    planner: Any,
    wrote: list[bool],
) -> Outcome:
    """Load ``uri`` into ``state_dict``; appends to ``wrote`` whether that began writing."""
    readers: list[CheckpointReader] = []
    try:
        return _read_into(manager, uri, state_dict, coll, planner, readers)
    finally:
        wrote.append(any(r.wrote for r in readers))


def _read_into(
    manager: CheckpointManager,
    uri: str,
    state_dict: dict[str, Any],
    coll: Collective | None,
    planner: Any,
    readers: list[CheckpointReader],
) -> Outcome:
    try:
        rel = manager.store.rel_from_uri(uri)
    except StoreError as exc:
        return Outcome(False, str(exc))
    name = parse_committed(rel)
    if name is None or name.format != "dcp" or name.kind != "full":
        return Outcome(False, "not a full DCP checkpoint; not loaded here")
    try:
        reader = CheckpointReader(manager.store, rel, read_manifest(manager.store, rel))
        readers.append(reader)
        reader.check_metadata()
        dcp_load(state_dict, storage_reader=reader, planner=planner, **_dist_args(coll))
    except (UnreadableError, ManifestMissingError) as exc:  # missing is not damaged
        return Outcome(False, str(exc), unreadable=True)
    except _BAD_DATA as exc:
        return Outcome(False, str(exc), invalid=True)
    except OSError as exc:
        return Outcome(False, f"{uri}: cannot be read ({exc})", unreadable=True)
    except CheckpointException as exc:
        failures = {rank: error for rank, (error, _) in exc.failures.items()}
        reasons = "; ".join(f"rank {r}: {e!r}" for r, e in failures.items())
        if any(isinstance(e, (UnreadableError, OSError)) for e in failures.values()):
            return Outcome(False, reasons, unreadable=True)
        bad = [f"rank {r}: {e}" for r, e in failures.items() if isinstance(e, _BAD_DATA)]
        if bad:
            return Outcome(False, "; ".join(bad), invalid=True)
        return Outcome(False, reasons, fatal=True)
    return Outcome(True)
