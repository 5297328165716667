"""Weights export and the consumer side: find, verify, load, materialise, report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from safetensors.torch import load_file

from ckpt_operator.api.names import ANNOTATION_HEARTBEAT, ANNOTATION_LOADED_STEP
from ckpt_operator.sdk import CheckpointManager, Consumer
from ckpt_operator.sdk.consumer import WeightsRef
from ckpt_operator.storage.store import Store


class FakeRegistry:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.annotations: list[tuple[str, dict[str, str]]] = []

    def register(self, record: Any) -> None: ...

    def request_verification(self, object_name: str, reason: str) -> None: ...

    def list_checkpoints(self, run: str) -> list[dict[str, Any]]:
        return self.items

    def annotate_pod(self, pod: str, annotations: Any) -> bool:
        self.annotations.append((pod, dict(annotations)))
        return True


def _obj(step: int, kind: str, phase: str, run: str = "r", fmt: str = "dir") -> dict[str, Any]:
    path = f"step-{step:010d}.attempt-1" + (".tar" if fmt == "tar" else "")
    return {
        "spec": {"run": run, "step": step, "attempt": 1, "path": path, "kind": kind, "format": fmt},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_export_load_and_fetch(any_store: Store, fmt: str, tmp_path: Path) -> None:
    trainer = CheckpointManager(any_store, run="r", attempt=1, format=fmt)  # type: ignore[arg-type]
    model = torch.nn.Linear(16, 4)
    trainer.save(5, model=model)  # a full checkpoint: not for consumers
    trainer.export_weights(model, 10, config={"hidden": 16})
    consumer = Consumer(any_store, run="r")  # no cluster: falls back to a store scan
    ref = consumer.latest()
    assert ref is not None and (ref.step, ref.format) == (10, fmt)
    fresh = torch.nn.Linear(16, 4)
    consumer.load_weights(ref, model=fresh)
    assert torch.equal(fresh.weight, model.weight) and consumer.config == {"hidden": 16}

    dest = tmp_path / "served"
    consumer.fetch(str(dest))
    assert json.loads((dest / "config.json").read_text()) == {"hidden": 16}
    weights = load_file(str(dest / "model.safetensors"))  # what an inference server does
    assert torch.equal(weights["weight"], model.weight)


def test_latest_uses_ready_weights_objects(file_store: Store) -> None:
    registry = FakeRegistry(
        [
            _obj(30, "full", "Ready"),
            _obj(25, "weights", "Pending"),
            _obj(20, "weights", "Ready"),
            _obj(40, "weights", "Ready", run="other"),
            _obj(15, "weights", "Invalid"),
            _obj(10, "weights", "Ready", fmt="tar"),
        ]
    )
    ref = Consumer(file_store, run="r", registry=registry).latest()
    assert ref is not None and (ref.step, ref.path) == (20, "step-0000000020.attempt-1")
    assert Consumer(file_store, run="r", registry=FakeRegistry([])).latest() is None


def test_report_loaded_and_env(file_store: Store, tmp_path: Path) -> None:
    registry = FakeRegistry([])
    env = {"CKPT_STORE": file_store.root_uri, "CKPT_RUN": "r", "HOSTNAME": "pod-h"}
    consumer = Consumer.from_env(env, registry=registry)
    assert consumer.pod == "pod-h"
    assert Consumer.from_env({**env, "POD_NAME": "pod-p"}, registry=registry).pod == "pod-p"
    assert consumer.report_loaded(20)
    ((pod, annotations),) = registry.annotations
    assert (pod, annotations[ANNOTATION_LOADED_STEP]) == ("pod-h", "20")
    assert ANNOTATION_HEARTBEAT in annotations  # a repeated report refreshes liveness
    assert not Consumer(file_store, run="r").report_loaded(20)  # no cluster: logged, False
    with pytest.raises(LookupError, match="no Ready weights"):
        Consumer(file_store, run="r").load_weights()
    with pytest.raises(ValueError, match="CKPT_RUN"):
        Consumer.from_env({"CKPT_STORE": "file:///x"})


def test_only_a_successful_load_is_reported(file_store: Store) -> None:
    registry = FakeRegistry([])
    trainer = CheckpointManager(file_store, run="r", attempt=1)
    model = torch.nn.Linear(16, 4)
    trainer.export_weights(model, 10, config={"v": 10})
    consumer = Consumer(file_store, run="r", pod="p", registry=registry)
    newest = Consumer(file_store, run="r").latest  # a store scan: no Checkpoint objects here
    assert not consumer.report_loaded() and registry.annotations == []  # nothing loaded yet

    consumer.load_weights(newest(), model=torch.nn.Linear(16, 4))
    trainer.export_weights(torch.nn.Linear(16, 8), 20, config={"v": 20})  # wrong shape
    with pytest.raises(RuntimeError, match="size mismatch"):
        consumer.load_weights(newest(), model=torch.nn.Linear(16, 4))
    assert consumer.loaded is not None and consumer.loaded.step == 10
    assert consumer.config == {"v": 10}  # still describes what is served
    assert consumer.report_loaded()
    [(_, annotations)] = registry.annotations
    assert annotations[ANNOTATION_LOADED_STEP] == "10"


def test_fetch_replaces_what_an_earlier_fetch_left(file_store: Store, tmp_path: Path) -> None:
    trainer = CheckpointManager(file_store, run="r", attempt=1)
    model = torch.nn.Linear(64, 64)
    trainer.export_weights(model, 10, config={"hidden": 64})
    trainer.export_weights(model, 20, config={"hidden": 64}, max_shard_size=8 << 10)
    consumer = Consumer(file_store, run="r")
    first, second = (WeightsRef(s, 1, f"weights-{s:010d}.attempt-1", "dir") for s in (10, 20))
    dest = tmp_path / "served"
    consumer.fetch(str(dest), first)
    assert (dest / "model.safetensors").exists()
    consumer.fetch(str(dest), second)
    names = sorted(p.name for p in dest.iterdir())
    assert "model.safetensors" not in names  # no stale single file beside the new shards
    assert "model.safetensors.index.json" in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "served"]  # no leftovers


def test_a_failed_fetch_leaves_dest_as_it_was(file_store: Store, tmp_path: Path) -> None:
    trainer = CheckpointManager(file_store, run="r", attempt=1)
    trainer.export_weights(torch.nn.Linear(4, 4), 10, config={})
    consumer = Consumer(file_store, run="r")
    ref = consumer.latest()
    assert ref is not None
    dest = tmp_path / "served"
    consumer.fetch(str(dest), ref)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    weights = Path(file_store.resolve(f"{ref.path}/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # same size, wrong checksum
    with pytest.raises(Exception, match=r"(?i)checksum|mismatch|corrupt"):
        consumer.fetch(str(dest), ref)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_load_model_reports_only_weights_the_model_holds(file_store: Store) -> None:
    trainer = CheckpointManager(file_store, run="r", attempt=1)
    trainer.export_weights(torch.nn.Linear(4, 2), 10, config={"shape": [4, 2]})
    trainer.export_weights(torch.nn.Linear(4, 3), 20, config={"shape": [4, 2]})  # wrong config
    registry = FakeRegistry([_weights(10), _weights(20)])
    consumer = Consumer(file_store, run="r", pod="p", registry=registry)

    def build(config: dict[str, Any]) -> torch.nn.Linear:
        return torch.nn.Linear(*config["shape"])

    first = WeightsRef(10, 1, "weights-0000000010.attempt-1", "dir")
    assert isinstance(consumer.load_model(build, first), torch.nn.Linear)
    assert consumer.loaded == first
    newest = consumer.latest()
    assert newest is not None and newest.step == 20
    with pytest.raises(RuntimeError, match="size mismatch"):
        consumer.load_model(build, newest)
    assert consumer.loaded == first  # the failed load is not what is served
    assert consumer.report_loaded()
    assert registry.annotations[-1][1][ANNOTATION_LOADED_STEP] == "10"


def _weights(step: int) -> dict[str, Any]:
    path = f"weights-{step:010d}.attempt-1"
    return {
        "spec": {"run": "r", "step": step, "attempt": 1, "path": path, "kind": "weights"},
        "status": {"phase": "Ready"},
    }


def test_store_scan_reads_only_weights_manifests(
    file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpt_operator.sdk import consumer as consumer_module

    trainer = CheckpointManager(file_store, run="r", attempt=1)
    model = torch.nn.Linear(4, 4)
    trainer.export_weights(model, 10, config={})
    for step in (20, 30):
        trainer.save(step, model=model)  # newer full checkpoints: never a consumer's
    scanned: list[str] = []
    real_scan = consumer_module.scan

    def recording(store: Store, rel: str, **kwargs: Any) -> Any:
        scanned.append(rel)
        return real_scan(store, rel, **kwargs)

    monkeypatch.setattr(consumer_module, "scan", recording)
    ref = Consumer(file_store, run="r").latest()
    assert ref is not None and ref.step == 10
    assert scanned == ["weights-0000000010.attempt-1"]


def test_fetch_into_a_mount_point_replaces_its_contents(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A volume mounted at dest cannot be renamed: its contents are replaced instead."""
    trainer = CheckpointManager(file_store, run="r", attempt=1)
    model = torch.nn.Linear(64, 64)
    trainer.export_weights(model, 10, config={})
    trainer.export_weights(model, 20, config={}, max_shard_size=8 << 10)
    dest = tmp_path / "mounted"
    dest.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(dest) or real_ismount(p))
    consumer = Consumer(file_store, run="r")
    consumer.fetch(str(dest), WeightsRef(10, 1, "weights-0000000010.attempt-1", "dir"))
    (dest / "stale-dir").mkdir()
    consumer.fetch(str(dest), WeightsRef(20, 1, "weights-0000000020.attempt-1", "dir"))
    names = sorted(p.name for p in dest.iterdir())
    assert "model.safetensors" not in names and "stale-dir" not in names
    assert "model.safetensors.index.json" in names and not [n for n in names if n[0] == "."]
