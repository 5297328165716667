"""Restore verifies each candidate, skips and reports bad ones, and falls back."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk.manager import env_candidates
from ckpt_operator.sdk.registry import CheckpointRecord
from ckpt_operator.storage.layout import MANIFEST_NAME
from ckpt_operator.storage.store import Store


class FakeRegistry:
    def __init__(self) -> None:
        self.registered: list[CheckpointRecord] = []
        self.invalid: list[tuple[str, str]] = []

    def register(self, record: CheckpointRecord) -> None:
        self.registered.append(record)

    def mark_invalid(self, object_name: str, reason: str) -> None:
        self.invalid.append((object_name, reason))

    def list_checkpoints(self, run: str) -> list[dict[str, Any]]:
        return []

    def annotate_pod(self, pod: str, annotations: Any) -> bool:
        return True


def _model(value: float) -> torch.nn.Linear:
    model = torch.nn.Linear(64, 64)
    torch.nn.init.constant_(model.weight, value)
    return model


def _save_steps(store: Store, fmt: str, registry: FakeRegistry | None = None) -> list[str]:
    manager = CheckpointManager(
        store,
        run="r",
        attempt=1,
        format=fmt,  # type: ignore[arg-type]
        registry=registry,
    )
    return [manager.save(step, model=_model(step)) for step in (10, 20, 30)]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt(store: Store, rel: str, how: str) -> str:
    """Damage checkpoint ``rel``; returns the file name the failure must mention."""
    root = Path(store.resolve(rel))
    if rel.endswith(".tar"):
        with tarfile.open(root) as tar:
            offset = tar.getmember("model.safetensors").offset_data
        if how == "flip":
            _flip(root, offset + 200)
            return "model.safetensors"
        with open(root, "r+b") as f:
            f.truncate(offset + 100)
        return rel
    if how == "flip":
        _flip(root / "model.safetensors", 300)
        return "model.safetensors"
    if how == "truncate":
        with open(root / "state.safetensors", "r+b") as f:
            f.truncate(10)
        return "state.safetensors"
    if how == "no-manifest":
        (root / MANIFEST_NAME).unlink()
        return MANIFEST_NAME
    (root / "state.json").unlink()
    return "state.json"


@pytest.mark.parametrize(
    ("fmt", "how"),
    [
        ("dir", "flip"),
        ("dir", "truncate"),
        ("dir", "no-manifest"),
        ("dir", "missing"),
        ("tar", "flip"),
        ("tar", "truncate"),
    ],
)
def test_restore_falls_back_past_a_damaged_checkpoint(
    file_store: Store, fmt: str, how: str
) -> None:
    registry = FakeRegistry()
    uris = _save_steps(file_store, fmt, registry)
    assert [r.name.step for r in registry.registered] == [10, 20, 30]
    newest = file_store.rel_from_uri(uris[-1])
    named = _corrupt(file_store, newest, how)

    model = _model(0)
    manager = CheckpointManager(
        file_store, run="r", attempt=2, registry=registry, resume_candidates=list(reversed(uris))
    )
    assert manager.restore(model=model) == 20
    assert torch.equal(model.weight, torch.full_like(model.weight, 20))
    [(name, reason)] = registry.invalid
    assert name == "r-step-30-a1" and named in reason


def test_no_good_candidate_returns_none(file_store: Store) -> None:
    uris = _save_steps(file_store, "dir")
    for uri in uris:
        _corrupt(file_store, file_store.rel_from_uri(uri), "flip")
    assert CheckpointManager(file_store).restore(model=_model(0)) is None


def test_store_scan_ignores_temporaries_and_picks_newest(file_store: Store) -> None:
    _save_steps(file_store, "tar")
    tmp = Path(file_store.resolve(".tmp.step-0000000040.attempt-1.abc"))
    tmp.write_bytes(b"partial")
    partial = Path(file_store.resolve("step-0000000050.attempt-1"))  # a dir without manifest
    partial.mkdir()
    model = _model(0)
    assert CheckpointManager(file_store).restore(model=model) == 30


def test_refused_candidates(file_store: Store, tmp_path: Path) -> None:
    uris = _save_steps(file_store, "dir")
    manager = CheckpointManager(file_store, run="r")
    weights = manager.export_weights(_model(40), 40)
    candidates = [
        f"file://{tmp_path}/elsewhere/step-0000000050.attempt-1",  # outside the root
        weights,  # a weights checkpoint cannot resume training
        file_store.uri("not-a-checkpoint"),
        uris[0],
    ]
    registry = FakeRegistry()
    resumer = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=candidates
    )
    assert resumer.restore(model=_model(0)) == 10
    assert registry.invalid == []


def test_from_env_contract(tmp_path: Path) -> None:
    store = f"file://{tmp_path}/run"
    cands = [f"{store}/step-0000000020.attempt-1", f"{store}/step-0000000010.attempt-1"]
    env = {
        "CKPT_STORE": store,
        "CKPT_RUN": "r",
        "CKPT_ATTEMPT": "3",
        "CKPT_NAMESPACE": "ns",
        "CKPT_RESUME_FROM": cands[0],
        "CKPT_RESUME_STEP": "20",
        "CKPT_RESUME_CANDIDATES": json.dumps(cands),
    }
    manager = CheckpointManager.from_env(env, registry=None)
    assert (manager.run, manager.attempt, manager.format) == ("r", 3, "dir")
    assert manager.candidates() == cands
    assert env_candidates({**env, "CKPT_RESUME_CANDIDATES": ""}) == cands[:1]
    assert env_candidates({"CKPT_RUN": "r"}) == []  # the operator chose: nothing to resume
    assert env_candidates({}) is None  # no operator: scan the store
    with pytest.raises(ValueError, match="JSON list"):
        env_candidates({"CKPT_RESUME_CANDIDATES": '{"a": 1}'})
    with pytest.raises(ValueError, match="CKPT_STORE"):
        CheckpointManager.from_env({})


def test_unpicklable_extra_is_refused_by_name(file_store: Store) -> None:
    manager = CheckpointManager(file_store)
    with pytest.raises(TypeError, match=r"extra\.cfg.*object"):
        manager.save(1, extra={"cfg": object()})
    assert file_store.list_entries() == []  # refused while staging: nothing written
