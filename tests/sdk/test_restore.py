"""Restore verifies each candidate, skips and reports bad ones, and falls back."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk import manager as manager_module
from ckpt_operator.sdk.manager import CandidatesUnreadableError, env_candidates
from ckpt_operator.sdk.registry import CheckpointRecord
from ckpt_operator.storage.layout import MANIFEST_NAME
from ckpt_operator.storage.store import Store


class FakeRegistry:
    def __init__(self) -> None:
        self.registered: list[CheckpointRecord] = []
        self.invalid: list[tuple[str, str]] = []

    def register(self, record: CheckpointRecord) -> None:
        self.registered.append(record)

    def request_verification(self, object_name: str, reason: str) -> None:
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
    (root / "state.json").unlink()
    return "state.json"


@pytest.mark.parametrize(
    ("fmt", "how"),
    [
        ("dir", "flip"),
        ("dir", "truncate"),
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
    assert env_candidates({"CKPT_RUN": "r"}) is None  # no candidates given: scan the store
    # the operator chose nothing: start from scratch, never scan what it did not verify
    assert env_candidates({"CKPT_RUN": "r", "CKPT_RESUME_CANDIDATES": "[]"}) == []
    assert env_candidates({"CKPT_RESUME_FROM": "", "CKPT_RESUME_CANDIDATES": ""}) == []
    assert env_candidates({"CKPT_RESUME_FROM": cands[0]}) == cands[:1]
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


def test_an_explicit_empty_candidate_list_starts_from_scratch(tmp_path: Path) -> None:
    """``[]`` is the operator's answer (nothing verified, or all Invalid or being deleted):
    the store's checkpoints must not be loaded behind its back."""
    store = f"file://{tmp_path}/run"
    _save_steps(Store.from_uri(store), "dir")
    env = {
        "CKPT_STORE": store,
        "CKPT_RUN": "r",
        "CKPT_ATTEMPT": "2",
        "CKPT_RESUME_FROM": "",
        "CKPT_RESUME_CANDIDATES": "[]",
    }
    manager = CheckpointManager.from_env(env, registry=None)
    assert manager.candidates() == []
    model = _model(0)
    assert manager.restore(model=model) is None
    assert torch.equal(model.weight, torch.zeros_like(model.weight))


def test_a_run_given_no_candidate_variable_scans_the_store(tmp_path: Path) -> None:
    """A pod that bypassed the webhook has no CKPT_RESUME_CANDIDATES: the store still has them."""
    store = f"file://{tmp_path}/run"
    _save_steps(Store.from_uri(store), "dir")
    env = {"CKPT_STORE": store, "CKPT_RUN": "r", "CKPT_ATTEMPT": "2"}
    model = _model(0)
    assert CheckpointManager.from_env(env, registry=None).restore(model=model) == 30
    assert torch.equal(model.weight, torch.full_like(model.weight, 30))


def test_store_scan_skips_an_entry_that_is_a_symlink_out_of_the_store(
    file_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save_steps(file_store, "dir")
    outside = Store.from_uri(f"file://{tmp_path}/outside")
    [foreign] = [CheckpointManager(outside, run="r", attempt=1).save(40, model=_model(40))]
    link = Path(file_store.resolve("step-0000000040.attempt-1"))
    link.symlink_to(outside.resolve(outside.rel_from_uri(foreign)))
    older = Path(file_store.resolve("step-0000000005.attempt-1"))
    older.symlink_to(outside.resolve(outside.rel_from_uri(foreign)))
    registry = FakeRegistry()
    model = _model(0)
    with caplog.at_level(logging.WARNING):
        assert CheckpointManager(file_store, run="r", registry=registry).restore(model=model) == 30
    assert torch.equal(model.weight, torch.full_like(model.weight, 30))
    assert any("step-0000000040" in r.message and "symlink" in r.message for r in caplog.records)
    assert registry.invalid == []


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "RETRY_BACKOFF_S", 0.0)


def _deny(
    monkeypatch: pytest.MonkeyPatch, error: Exception, match: str, times: int | None = None
) -> list[str]:
    """Make opening any path containing ``match`` raise ``error`` (the first ``times`` opens)."""
    denied: list[str] = []
    real = Store.open

    def open_(self: Store, rel: str, mode: str = "rb", **kwargs: Any) -> Any:
        if match in rel and (times is None or len(denied) < times):
            denied.append(rel)
            raise error
        return real(self, rel, mode, **kwargs)

    monkeypatch.setattr(Store, "open", open_)
    return denied


@pytest.mark.usefixtures("no_backoff")
def test_an_access_error_is_retried_and_never_reported(
    file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FakeRegistry()
    uris = _save_steps(file_store, "dir")
    denied = _deny(monkeypatch, PermissionError(13, "403 Forbidden"), "0030", times=2)
    manager = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=list(reversed(uris))
    )
    assert manager.restore(model=_model(0)) == 30
    assert len(denied) == 2 and registry.invalid == []


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize(
    "error", [PermissionError(13, "403 Forbidden"), TimeoutError("read timed out")]
)
def test_candidates_that_cannot_be_read_raise_instead_of_starting_over(
    file_store: Store, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    registry = FakeRegistry()
    uris = _save_steps(file_store, "dir")
    _corrupt(file_store, file_store.rel_from_uri(uris[0]), "flip")  # proven damaged
    denied = _deny(monkeypatch, error, "step-")
    manager = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=list(reversed(uris))
    )
    with pytest.raises(CandidatesUnreadableError, match="access errors") as caught:
        manager.restore(model=_model(0))
    assert set(caught.value.errors) == set(uris)  # the flipped one was never read either
    assert len(denied) == 3 * manager_module.READ_ATTEMPTS
    assert registry.invalid == []


@pytest.mark.usefixtures("no_backoff")
def test_a_listed_file_not_found_is_no_proof_of_damage(file_store: Store) -> None:
    registry = FakeRegistry()
    uris = _save_steps(file_store, "dir")
    _corrupt(file_store, file_store.rel_from_uri(uris[-1]), "missing")
    _corrupt(file_store, file_store.rel_from_uri(uris[0]), "flip")
    manager = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=list(reversed(uris))
    )
    assert manager.restore(model=_model(0)) == 20
    assert registry.invalid == []  # 30 lacks a file: maybe not yet visible, not damaged
    only_damaged = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=[uris[0]]
    )
    assert only_damaged.restore(model=_model(0)) is None  # a proven mismatch: no error
    [(name, _)] = registry.invalid
    assert name == "r-step-10-a1"


@pytest.mark.usefixtures("no_backoff")
def test_a_missing_manifest_is_unreadable_for_the_trainer_and_invalid_for_the_operator(
    file_store: Store,
) -> None:
    from ckpt_operator.storage.manifest import verify

    registry = FakeRegistry()
    uris = _save_steps(file_store, "dir")
    newest = file_store.rel_from_uri(uris[-1])
    Path(file_store.resolve(newest), MANIFEST_NAME).unlink()
    manager = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=list(reversed(uris))
    )
    assert manager.restore(model=_model(0)) == 20
    assert registry.invalid == []  # deleted meanwhile, or not yet visible: never blamed
    only_missing = CheckpointManager(
        file_store, run="r", registry=registry, resume_candidates=[uris[-1]]
    )
    with pytest.raises(CandidatesUnreadableError):
        only_missing.restore(model=_model(0))
    assert registry.invalid == []
    result = verify(file_store, newest, "full")  # the operator's check: Invalid, as before
    assert not result.ok and "missing" in result.reason
