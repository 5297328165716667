"""Distributed saves are one checkpoint; all ranks restore the same one (gloo, forked ranks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk.registry import CheckpointRecord
from ckpt_operator.storage.layout import MANIFEST_NAME, CheckpointName
from ckpt_operator.storage.manifest import read_manifest, verify
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.s3 import S3Server
from tests.sdk.ranks import run_ranks


class Recorder:
    """A registry that remembers calls, for a rank to report back."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def register(self, record: CheckpointRecord) -> None:
        self.calls.append(["register", record.name.path, record.world_size, record.shards])

    def request_verification(self, object_name: str, reason: str) -> None:
        self.calls.append(["invalid", object_name, reason])

    def list_checkpoints(self, run: str) -> list[dict[str, Any]]:
        return []

    def annotate_pod(self, pod: str, annotations: Any) -> bool:
        return True


def model_for(step: int, rank: int) -> torch.nn.Linear:
    """Every rank holds different state, so a rank loading another's shard is caught."""
    model = torch.nn.Linear(8, 8)
    torch.nn.init.constant_(model.weight, 100 * step + rank)
    return model


StoreArg = Store | Callable[[], Store]
"""A store, or for s3 a factory: an s3 filesystem is not fork-safe, each rank opens its own."""


def _open(store: StoreArg) -> Store:
    return store if isinstance(store, Store) else store()


def save_steps(store: StoreArg, steps: list[int], **kwargs: Any) -> Any:
    def body(rank: int) -> Any:
        registry = Recorder()
        manager = CheckpointManager(_open(store), run="r", attempt=1, registry=registry, **kwargs)
        for step in steps:
            manager.save(step, model=model_for(step, rank), extra={"rank": rank})
        return registry.calls

    return body


def restore_body(store: StoreArg, candidates: list[str] | None = None) -> Any:
    def body(rank: int) -> Any:
        registry = Recorder()
        model = model_for(0, 0)
        manager = CheckpointManager(
            _open(store), run="r", attempt=2, registry=registry, resume_candidates=candidates
        )
        step = manager.restore(model=model, restore_rng=False)
        return [step, model.weight[0, 0].item(), manager.extra, registry.calls]

    return body


def test_one_checkpoint_from_every_rank(file_store: Store, tmp_path: Path) -> None:
    calls = run_ranks(3, save_steps(file_store, [10, 20]), tmp_path / "save").ok()
    assert calls[0] == [
        ["register", "step-0000000010.attempt-1", 3, 3],
        ["register", "step-0000000020.attempt-1", 3, 3],
    ]
    assert calls[1] == calls[2] == []  # only rank 0 registers
    assert file_store.list_entries() == [
        "step-0000000010.attempt-1",
        "step-0000000020.attempt-1",
    ]
    manifest = read_manifest(file_store, "step-0000000020.attempt-1")
    assert (manifest.world_size, manifest.shards) == (3, 3)
    assert {f.path.split("/")[0] for f in manifest.files} == {
        "rank-00000",
        "rank-00001",
        "rank-00002",
    }
    assert verify(file_store, "step-0000000020.attempt-1", "full").ok
    restored = run_ranks(3, restore_body(file_store), tmp_path / "restore").ok()
    assert [r[:3] for r in restored] == [[20, 2000 + rank, {"rank": rank}] for rank in range(3)]


def test_a_shard_corrupted_on_one_side_moves_every_rank_back(
    file_store: Store, tmp_path: Path
) -> None:
    run_ranks(2, save_steps(file_store, [10, 20]), tmp_path / "save").ok()
    shard = Path(file_store.resolve("step-0000000020.attempt-1/rank-00001/model.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    restored = run_ranks(2, restore_body(file_store), tmp_path / "restore").ok()
    assert [r[:2] for r in restored] == [[10, 1000], [10, 1001]]
    [(what, name, reason)] = restored[0][3]  # rank 0 alone marks it, naming the rank
    assert (what, name) == ("invalid", "r-step-20-a1")
    assert "rank 1:" in reason and "rank-00001/model.safetensors" in reason
    assert restored[1][3] == []


def test_native_checkpoints_refuse_another_world_size(file_store: Store, tmp_path: Path) -> None:
    run_ranks(2, save_steps(file_store, [10]), tmp_path / "save").ok()
    three = run_ranks(3, restore_body(file_store), tmp_path / "three")
    assert all(three.raised(rank) for rank in range(3))
    assert all("do not reshard" in (e or "") for e in three.errors)
    with pytest.raises(ValueError, match="written by 2 ranks"):
        CheckpointManager(file_store).restore(model=model_for(0, 0))


def test_single_process_checkpoint_restores_on_every_rank(
    file_store: Store, tmp_path: Path
) -> None:
    CheckpointManager(file_store, run="r", attempt=1).save(5, model=model_for(5, 0))
    restored = run_ranks(2, restore_body(file_store), tmp_path / "restore").ok()
    assert [r[:2] for r in restored] == [[5, 500], [5, 500]]


def test_tar_is_refused_and_s3_defaults_to_dir(
    file_store: Store, tmp_path: Path, s3: S3Server
) -> None:
    tar = run_ranks(2, save_steps(file_store, [10], format="tar"), tmp_path / "tar")
    assert all(tar.raised(rank) for rank in range(2))
    assert all("a tar is one stream" in (e or "") for e in tar.errors)
    assert file_store.list_entries() == []

    def s3_store() -> Store:
        return Store.from_uri(s3.uri("dist/run"), storage_options=s3.storage_options)

    run_ranks(2, save_steps(s3_store, [10, 20]), tmp_path / "s3").ok()
    store = s3_store()
    assert store.list_entries() == ["step-0000000010.attempt-1", "step-0000000020.attempt-1"]
    assert verify(store, "step-0000000020.attempt-1", "full").ok
    restored = run_ranks(2, restore_body(s3_store), tmp_path / "s3-restore").ok()
    assert [r[:2] for r in restored] == [[20, 2000], [20, 2001]]


def test_a_rank_that_cannot_stage_fails_every_rank(file_store: Store, tmp_path: Path) -> None:
    def body(rank: int) -> None:
        manager = CheckpointManager(file_store, run="r", attempt=1)
        manager.save(10, model=model_for(10, rank), extra={"bad": object()} if rank else None)

    ranks = run_ranks(2, body, tmp_path / "stage", timeout_s=30)
    assert ranks.raised(0) and ranks.raised(1)
    assert "cannot be saved without pickle" in (ranks.errors[0] or "")
    assert [e for e in file_store.list_entries() if not e.startswith(".tmp.")] == []


def test_async_distributed_saves(file_store: Store, tmp_path: Path) -> None:
    def body(rank: int) -> Any:
        with CheckpointManager(file_store, run="r", attempt=1) as manager:
            for step in (1, 2, 3):
                manager.save(step, model=model_for(step, rank), blocking=False)
            manager.wait()
        return None

    run_ranks(2, body, tmp_path / "async").ok()
    name = CheckpointName(3, 1, "dir")
    manifest = json.loads(Path(file_store.resolve(name.path), MANIFEST_NAME).read_text())
    assert manifest["world_size"] == 2
    restored = run_ranks(2, restore_body(file_store), tmp_path / "restore").ok()
    assert [r[:2] for r in restored] == [[3, 300], [3, 301]]


def test_an_export_from_rank_0_alone_before_any_save_does_not_hang(
    file_store: Store, tmp_path: Path
) -> None:
    """is_leader must not make the SDK's group (collective) when rank 0 alone asks."""

    def body(rank: int) -> Any:
        manager = CheckpointManager(file_store, run="r", attempt=1, collective_timeout_s=10)
        if rank == 0:
            manager.export_weights(model_for(5, rank), 5, config={"n": 8})
        torch.distributed.barrier()  # training's own collectives go on meanwhile
        manager.save(10, model=model_for(10, rank))
        return manager.is_leader

    assert run_ranks(2, body, tmp_path / "export", timeout_s=40).ok() == [True, False]
    assert file_store.list_entries() == [
        "step-0000000010.attempt-1",
        "weights-0000000005.attempt-1",
    ]


class _BrokenOptimizer:
    def state_dict(self) -> Any:
        raise RuntimeError("optimizer state unavailable")

    def load_state_dict(self, state: Any) -> None: ...


def test_any_staging_failure_on_one_rank_fails_every_rank_at_once(
    file_store: Store, tmp_path: Path
) -> None:
    """Not only StateError: any exception before the save's collectives reaches the peers."""

    def body(rank: int) -> None:
        manager = CheckpointManager(file_store, run="r", attempt=1)  # 300 s collective timeout
        optimizer = _BrokenOptimizer() if rank == 1 else None
        manager.save(10, model=model_for(10, rank), optimizer=optimizer)  # type: ignore[arg-type]

    ranks = run_ranks(2, body, tmp_path / "stage", timeout_s=30)
    assert ranks.raised(0) and ranks.raised(1)
    assert "optimizer state unavailable" in (ranks.errors[0] or "")
    assert [e for e in file_store.list_entries() if not e.startswith(".tmp.")] == []


def test_a_failed_candidate_scan_on_rank_0_fails_every_rank_at_once(
    file_store: Store, tmp_path: Path
) -> None:
    def body(rank: int) -> None:
        manager = CheckpointManager(file_store, run="r", attempt=1)  # 300 s collective timeout
        if rank == 0:

            def unlistable() -> list[str]:
                raise PermissionError("cannot list the store")

            manager.store.list_entries = unlistable  # type: ignore[method-assign]
        manager.restore(model=model_for(0, rank))

    ranks = run_ranks(2, body, tmp_path / "scan", timeout_s=30)
    assert ranks.raised(0) and ranks.raised(1)
    assert "cannot list the store" in (ranks.errors[1] or "")
