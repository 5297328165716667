"""SIGKILL one rank of a distributed save at every point of the protocol: no partial
checkpoint is ever committed, the survivors raise instead of hanging, and every rank of a
new job restores the same, previous, checkpoint.

Points: each file operation of either rank (writes killed half-way, fsyncs, the manifest
write, the rename, …) and each collective of either rank (before writing, after the files
before the gather, while waiting for the commit).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk.collective import Collective
from ckpt_operator.storage.layout import CheckpointName, is_temporary, parse_committed
from ckpt_operator.storage.manifest import verify
from ckpt_operator.storage.store import Store
from tests.sdk.ranks import run_ranks
from tests.sdk.test_distributed import model_for

_OPS = ("write", "fsync", "rename", "mkdir", "open")
_COLLECTIVES = ("broadcast", "all_gather")
WORLD = 2


def _save(store: Store, step: int, rank: int) -> None:
    manager = CheckpointManager(store, run="r", attempt=1, collective_timeout_s=20)
    manager.save(step, model=model_for(step, rank), extra={"rank": rank})


def _instrument(on_op: Callable[[str, tuple[Any, ...]], None]) -> None:
    """Call ``on_op`` before every file operation and checkpoint collective of this rank."""
    for name in _OPS:
        real = getattr(os, name)

        def op(*args: Any, _name: str = name, _real: Callable[..., Any] = real) -> Any:
            on_op(_name, args)
            return _real(*args)

        setattr(os, name, op)
    for name in _COLLECTIVES:
        real = getattr(Collective, name)

        def coll(self: Collective, *args: Any, _name: str = name, _real: Any = real) -> Any:
            on_op(f"collective:{_name}", args)
            return _real(self, *args)

        setattr(Collective, name, coll)


def _kill_at(point: int) -> Callable[[str, tuple[Any, ...]], None]:
    count = [0]
    real_write = os.write

    def on_op(name: str, args: tuple[Any, ...]) -> None:
        count[0] += 1
        if count[0] == point:
            if name == "write" and len(args[1]) > 1:
                real_write(args[0], args[1][: len(args[1]) // 2])  # die half-way through
            os.kill(os.getpid(), signal.SIGKILL)

    return on_op


def _points(store: Store, out: Path) -> list[list[str]]:
    """The operations each rank performs during one save, in order."""

    def body(rank: int) -> list[str]:
        seen: list[str] = []
        _instrument(lambda name, args: seen.append(name))
        _save(store, 999, rank)
        return seen

    ops: list[list[str]] = run_ranks(WORLD, body, out).ok()
    store.remove(CheckpointName(999, 1, "dir").path)
    return ops


def _restore_everywhere(store: Store, out: Path) -> list[list[Any]]:
    def body(rank: int) -> list[Any]:
        model = model_for(0, 0)
        step = CheckpointManager(store).restore(model=model, restore_rng=False)
        return [step, model.weight[0, 0].item()]

    restored: list[list[Any]] = run_ranks(WORLD, body, out).ok()
    return restored


def test_kill_one_rank_at_every_point(file_store: Store, tmp_path: Path) -> None:
    run_ranks(WORLD, lambda rank: _save(file_store, 1, rank), tmp_path / "first").ok()
    ops = _points(file_store, tmp_path / "count")
    rename = ops[0].index("rename") + 1
    trials = [(rank, point) for rank in range(WORLD) for point in range(1, len(ops[rank]) + 1)]
    assert len(trials) >= 20
    committed = {1}
    for index, (victim, point) in enumerate(trials):
        step = 100 + index

        def body(rank: int, victim: int = victim, point: int = point, step: int = step) -> None:
            if rank == victim:
                _instrument(_kill_at(point))
            _save(file_store, step, rank)

        ranks = run_ranks(WORLD, body, tmp_path / f"trial-{index}", timeout_s=60)
        what = f"rank {victim} killed at {ops[victim][point - 1]} #{point}"
        assert ranks.killed(victim), what
        survivor = 1 - victim
        name = CheckpointName(step, 1, "dir")
        may_commit = (victim == 0 and point > rename) or ops[victim][point - 1 :] == [
            "collective:broadcast"
        ]
        if file_store.exists(name.path):
            assert may_commit, f"{what}: committed although killed before the commit"
            committed.add(step)
        assert ranks.raised(survivor) or (step in committed and ranks.succeeded(survivor)), what
        for entry in file_store.list_entries():
            parsed = parse_committed(entry)
            if parsed is None:
                assert is_temporary(entry) and victim == 0, f"{what}: left {entry}"
                file_store.remove(entry)  # what the operator's orphan sweep does
                continue
            result = verify(file_store, entry, "full")
            assert result.ok, f"{what}: committed {entry} is partial: {result.reason}"
        newest = max(committed)
        restored = _restore_everywhere(file_store, tmp_path / f"restore-{index}")
        assert restored == [[newest, 100 * newest + rank] for rank in range(WORLD)], what
    assert committed - {1}, "no trial reached the commit: points miss the end of the protocol"
    assert len(committed) < len(trials) / 2
