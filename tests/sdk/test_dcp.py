"""DCP checkpoints through the store: saved by 2 ranks, loaded by 1 and 3 (resharded DTensors),
checked before anything is parsed, and every rank falls back together past a damaged shard."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk import manager as manager_module
from ckpt_operator.sdk.dcp import load_metadata
from ckpt_operator.sdk.dcpio import PartlyLoadedError
from ckpt_operator.sdk.manager import CandidatesUnreadableError
from ckpt_operator.storage.layout import MANIFEST_NAME, CheckpointName
from ckpt_operator.storage.manifest import FileEntry, Manifest, new_hasher, read_manifest, verify
from ckpt_operator.storage.store import Store
from tests.sdk.ranks import run_ranks
from tests.sdk.test_distributed import Recorder

ROWS = 12  # divisible by 1, 2 and 3 ranks


def full_weight(step: int) -> torch.Tensor:
    return torch.arange(ROWS * 4, dtype=torch.float32).reshape(ROWS, 4) + 1000 * step


def state(step: int, rank: int, world: int) -> dict[str, Any]:
    """A row-sharded DTensor, a replicated tensor and plain values, as FSDP2 users have."""
    mesh = init_device_mesh("cpu", (world,))
    local = full_weight(step).chunk(world)[rank].clone()
    return {
        "w": DTensor.from_local(local, mesh, [Shard(0)]),
        "b": torch.full((3,), float(step)),
        "meta": {"step": step, "name": f"s{step}"},
    }


def save_body(store: Store, steps: list[int], blocking: bool = True) -> Any:
    def body(rank: int) -> Any:
        registry = Recorder()
        manager = CheckpointManager(store, run="r", attempt=1, registry=registry)
        for step in steps:
            done = manager.save_dcp(
                step, state(step, rank, 2), metrics={"loss": 1.0}, blocking=blocking
            )
            if not blocking:
                done.result()
        return registry.calls

    return body


def load_body(store: Store, world: int) -> Any:
    def body(rank: int) -> Any:
        registry = Recorder()
        target = state(0, rank, world)
        target["w"].to_local().zero_()
        step = CheckpointManager(store, run="r", attempt=2, registry=registry).restore_dcp(target)
        expected = full_weight(step).chunk(world)[rank]
        return [step, torch.equal(target["w"].to_local(), expected), target["b"][0].item(),
                target["meta"], registry.calls]  # fmt: skip

    return body


def load_here(store: Store) -> tuple[int | None, dict[str, Any]]:
    """One process, no torch.distributed: plain tensors receive the whole state."""
    target: dict[str, Any] = {
        "w": torch.zeros(ROWS, 4),
        "b": torch.zeros(3),
        "meta": {"step": 0, "name": ""},  # DCP loads the keys the target has
    }
    return CheckpointManager(store).restore_dcp(target), target


def test_save_with_two_load_with_one_and_three(file_store: Store, tmp_path: Path) -> None:
    calls = run_ranks(2, save_body(file_store, [10, 20]), tmp_path / "save").ok()
    assert calls[0] == [
        ["register", "step-0000000010.attempt-1.dcp", 2, 2],
        ["register", "step-0000000020.attempt-1.dcp", 2, 2],
    ]
    assert calls[1] == []
    rel = CheckpointName(20, 1, "dcp").path
    assert file_store.list_entries() == [CheckpointName(10, 1, "dcp").path, rel]
    manifest = read_manifest(file_store, rel)
    on_disk = sorted(os.listdir(file_store.resolve(rel)))
    assert on_disk == sorted([MANIFEST_NAME, *(f.path for f in manifest.files)])
    assert ".metadata" in on_disk and (manifest.world_size, manifest.shards) == (2, 2)
    assert verify(file_store, rel, "full").ok  # what the operator checks

    step, target = load_here(file_store)
    assert step == 20 and torch.equal(target["w"], full_weight(20))
    assert target["b"][0].item() == 20 and target["meta"] == {"step": 20, "name": "s20"}

    three = run_ranks(3, load_body(file_store, 3), tmp_path / "three").ok()
    assert [r[:4] for r in three] == [[20, True, 20.0, {"step": 20, "name": "s20"}]] * 3


def test_async_save(file_store: Store, tmp_path: Path) -> None:
    run_ranks(2, save_body(file_store, [1, 2], blocking=False), tmp_path / "save").ok()
    assert verify(file_store, CheckpointName(2, 1, "dcp").path, "full").ok
    restored = run_ranks(2, load_body(file_store, 2), tmp_path / "load").ok()
    assert [r[:2] for r in restored] == [[2, True], [2, True]]


def test_flipped_byte_in_one_shard_moves_everyone_back(file_store: Store, tmp_path: Path) -> None:
    run_ranks(2, save_body(file_store, [10, 20]), tmp_path / "save").ok()
    rel = CheckpointName(20, 1, "dcp").path
    shard = Path(file_store.resolve(rel), "__1_0.distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert not verify(file_store, rel, "full").ok

    for world in (2, 3):
        restored = run_ranks(world, load_body(file_store, world), tmp_path / f"load-{world}").ok()
        assert [r[:2] for r in restored] == [[10, True]] * world
        [(what, name, reason)] = restored[0][4]
        assert (what, name) == ("invalid", "r-step-20-a1") and "__1_0.distcp" in reason
        assert all(r[4] == [] for r in restored[1:])
    assert load_here(file_store)[0] == 10


def _rewrite(store: Store, rel: str, file: str, data: bytes) -> None:
    """Replace a file and re-checksum it in the manifest: an attacker who can write both."""
    Path(store.resolve(rel), file).write_bytes(data)
    old = read_manifest(store, rel)
    hasher = new_hasher()
    hasher.update(data)
    files = [
        FileEntry(path=f.path, size=len(data), checksum=hasher.hexdigest()) if f.path == file else f
        for f in old.files
    ]
    fields = old.model_dump(
        exclude={"files", "total_size", "digest", "created", "format_version", "algorithm"}
    )
    new = Manifest.build(**{**fields, "files": files})
    Path(store.resolve(rel), MANIFEST_NAME).write_bytes(new.to_bytes())


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def test_metadata_is_never_unpickled_unrestricted(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_ranks(2, save_body(file_store, [10, 20]), tmp_path / "save").ok()
    rel = CheckpointName(20, 1, "dcp").path
    real = load_metadata(Path(file_store.resolve(rel), ".metadata").read_bytes())
    assert "w" in real.state_dict_metadata  # our own metadata loads weights-only

    _rewrite(file_store, rel, ".metadata", pickle.dumps(_Payload(), protocol=2))
    assert verify(file_store, rel, "full").ok  # checksums cannot stop this attacker ...
    assert load_here(file_store)[0] == 10  # ... the weights-only unpickler does
    assert not (tmp_path / "PWNED").exists()


def test_non_tensor_items_load_weights_only(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manager = CheckpointManager(file_store, run="r")
    manager.save_dcp(1, {"w": torch.ones(2), "meta": {"step": 1}})
    manager.save_dcp(2, {"w": torch.ones(2), "meta": {"step": _Payload()}})
    target: dict[str, Any] = {"w": torch.zeros(2), "meta": {"step": 0}}
    assert CheckpointManager(file_store).restore_dcp(target) == 1
    assert not (tmp_path / "PWNED").exists()
    assert target["meta"] == {"step": 1}


def test_a_failed_save_commits_nothing(file_store: Store) -> None:
    manager = CheckpointManager(file_store, run="r")
    with pytest.raises(BaseException, match="boom"):
        manager.save_dcp(1, {"w": torch.ones(2), "bad": _Exploding()})
    assert file_store.list_entries() == []


class _Exploding:
    def __reduce__(self) -> tuple[Any, ...]:
        raise RuntimeError("boom")


def test_loaded_metadata_stays_readable_by_stock_dcp(file_store: Store) -> None:
    CheckpointManager(file_store, run="r").save_dcp(3, {"w": torch.ones(2)})
    raw = Path(file_store.resolve(CheckpointName(3, 0, "dcp").path), ".metadata").read_bytes()
    assert pickle.load(io.BytesIO(raw)).state_dict_metadata.keys() == {"w"}


def test_a_shard_that_cannot_be_read_is_retried_not_blamed(
    file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "RETRY_BACKOFF_S", 0.0)
    manager = CheckpointManager(file_store, run="r")
    uris = [manager.save_dcp(step, {"w": torch.full((2,), float(step))}) for step in (1, 2)]
    newest = Path(file_store.resolve(file_store.rel_from_uri(uris[1])))
    for shard in newest.glob("*.distcp"):
        shard.unlink()  # listed in the manifest, not found: an access error, not damage
    registry = Recorder()
    target: dict[str, Any] = {"w": torch.zeros(2)}
    assert CheckpointManager(file_store, run="r", registry=registry).restore_dcp(target) == 1
    assert torch.equal(target["w"], torch.ones(2)) and registry.calls == []
    only_newest = CheckpointManager(file_store, run="r", resume_candidates=uris[1:])
    with pytest.raises(CandidatesUnreadableError, match="step-0000000002"):
        only_newest.restore_dcp(target)


def _hostile(store: Store, rel: str, relative_path: str) -> None:
    """Point every item of ``rel``'s ``.metadata`` at ``relative_path`` (re-checksummed)."""
    where = Path(store.resolve(rel), ".metadata")
    metadata = load_metadata(where.read_bytes())
    assert metadata.storage_data
    metadata.storage_data = {
        index: dataclasses.replace(info, relative_path=relative_path)
        for index, info in metadata.storage_data.items()
    }
    _rewrite(store, rel, ".metadata", pickle.dumps(metadata, protocol=2))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_metadata_cannot_make_the_reader_open_files_outside_the_checkpoint(
    file_store: Store, tmp_path: Path, how: str
) -> None:
    manager = CheckpointManager(file_store, run="r")
    manager.save_dcp(1, {"w": torch.full((2,), 1.0)})
    manager.save_dcp(2, {"w": torch.full((2,), 2.0)})
    rel = CheckpointName(2, 0, "dcp").path
    directory = Path(file_store.resolve(rel))
    [shard] = directory.glob("*.distcp")
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = outside / shard.name  # the same bytes: checksums alone would let it through
    copy.write_bytes(shard.read_bytes())
    if how == "symlink":
        shard.unlink()
        shard.symlink_to(copy)
    else:
        shard.rename(directory / "moved")  # only the copy outside holds the data now
        target = f"../../outside/{shard.name}" if how == "dotdot" else str(copy)
        _hostile(file_store, rel, target)
    registry = Recorder()
    target_state: dict[str, Any] = {"w": torch.zeros(2)}
    restorer = CheckpointManager(file_store, run="r", attempt=1, registry=registry)
    assert restorer.restore_dcp(target_state) == 1
    assert torch.equal(target_state["w"], torch.full((2,), 1.0))
    assert [call[0] for call in registry.calls] == ["invalid"]


class _FailsAfterFirstTensor(DefaultLoadPlanner):
    """Damage found after one tensor was already copied into the caller's state."""

    def __init__(self) -> None:
        super().__init__()
        self.committed = 0

    def commit_tensor(self, read_item: Any, tensor: torch.Tensor) -> None:
        super().commit_tensor(read_item, tensor)
        self.committed += 1
        if self.committed == 1:
            raise pickle.UnpicklingError("damaged item after the first tensor")


def test_a_candidate_that_fails_after_writing_into_the_state_is_not_a_fresh_start(
    file_store: Store,
) -> None:
    uri = CheckpointManager(file_store, run="r").save_dcp(
        2, {"a": torch.full((2,), 2.0), "b": torch.full((2,), 2.0)}
    )
    target: dict[str, Any] = {"a": torch.zeros(2), "b": torch.zeros(2)}
    manager = CheckpointManager(file_store, run="r", resume_candidates=[uri])
    with pytest.raises(PartlyLoadedError, match="partly overwritten"):
        manager.restore_dcp(target, planner=_FailsAfterFirstTensor())


def test_a_candidate_that_fails_before_writing_leaves_a_fresh_start(file_store: Store) -> None:
    uri = CheckpointManager(file_store, run="r").save_dcp(2, {"a": torch.full((2,), 2.0)})
    [shard] = Path(file_store.resolve(file_store.rel_from_uri(uri))).glob("*.distcp")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # caught by the checksum before anything is parsed
    shard.write_bytes(bytes(data))
    target: dict[str, Any] = {"a": torch.zeros(2)}
    manager = CheckpointManager(file_store, run="r", resume_candidates=[uri])
    assert manager.restore_dcp(target) is None
    assert torch.equal(target["a"], torch.zeros(2))
