"""Manifests and the single verifier: every corruption fails with the file named."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from ckpt_operator.sdk.writer import CheckpointExistsError, write_checkpoint
from ckpt_operator.storage.layout import MANIFEST_NAME, CheckpointName
from ckpt_operator.storage.manifest import FileEntry, Manifest, compute_digest, verify
from ckpt_operator.storage.store import Store

DATA = os.urandom(3 << 20)


def _write(store: Store, fmt: str, step: int = 7) -> CheckpointName:
    name = CheckpointName(step, 1, fmt)  # type: ignore[arg-type]
    files = {
        "weights.bin": ([memoryview(DATA[:100]), memoryview(DATA[100:])], len(DATA)),
        "state.json": ([memoryview(b'{"a": 1}')], 8),
        "empty": ([], 0),
    }
    write_checkpoint(store, name, files, run="r", metrics={"loss": 1.5})
    return name


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_written_checkpoint_verifies(any_store: Store, fmt: str) -> None:
    name = _write(any_store, fmt)
    assert any_store.list_entries() == [name.path]  # no temporaries left behind
    for mode in ("size", "full"):
        result = verify(any_store, name.path, mode)
        assert result.ok, result.reason
        assert result.manifest is not None and result.digest == result.manifest.digest
        assert result.manifest.metrics == {"loss": 1.5} and result.manifest.kind == "full"
        assert result.size_bytes >= len(DATA) + 8
    with pytest.raises(CheckpointExistsError):
        _write(any_store, fmt)


def test_tar_is_a_standard_archive(file_store: Store) -> None:
    name = _write(file_store, "tar")
    path = file_store.resolve(name.path)
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["weights.bin", "state.json", "empty", MANIFEST_NAME]
        member = tar.extractfile("weights.bin")
        assert member is not None and member.read() == DATA
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "tf", path], capture_output=True, check=True, text=True)
        assert listing.stdout.split() == ["weights.bin", "state.json", "empty", MANIFEST_NAME]


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_dir_corruptions_name_the_file(file_store: Store) -> None:
    name = _write(file_store, "dir")
    root = Path(file_store.resolve(name.path))

    _flip(str(root / "weights.bin"), 12345)
    assert verify(file_store, name.path, "size").ok  # same size: only checksums notice
    result = verify(file_store, name.path, "full")
    assert not result.ok and "weights.bin" in result.reason and "checksum" in result.reason
    _flip(str(root / "weights.bin"), 12345)
    assert verify(file_store, name.path, "full").ok

    with open(root / "weights.bin", "r+b") as f:
        f.truncate(len(DATA) - 1)
    for mode in ("size", "full"):
        result = verify(file_store, name.path, mode)
        assert not result.ok and "weights.bin" in result.reason and "size" in result.reason

    (root / "weights.bin").write_bytes(DATA + b"x")
    result = verify(file_store, name.path, "full")
    assert not result.ok and "weights.bin" in result.reason
    (root / "weights.bin").unlink()
    result = verify(file_store, name.path, "size")
    assert not result.ok and "weights.bin: missing" in result.reason

    raw = json.loads((root / MANIFEST_NAME).read_text())
    raw["files"][1]["size"] = 9
    (root / MANIFEST_NAME).write_text(json.dumps(raw))
    result = verify(file_store, name.path, "size")
    assert not result.ok and MANIFEST_NAME in result.reason and "invalid manifest" in result.reason

    (root / MANIFEST_NAME).unlink()
    result = verify(file_store, name.path, "size")
    assert not result.ok and f"{MANIFEST_NAME} is missing" in result.reason


def test_an_io_error_is_no_verdict(file_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO while reading says nothing of the content: retryable, unlike a mismatch."""
    name = _write(file_store, "dir")

    def failing(*_: object, **__: object) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(file_store, "open", failing)
    result = verify(file_store, name.path, "full")
    assert not result.ok and result.retryable and "cannot be read" in result.reason
    monkeypatch.undo()
    assert verify(file_store, name.path, "full").ok
    os.truncate(Path(file_store.resolve(name.path)) / "weights.bin", 1)
    assert not verify(file_store, name.path, "size").retryable


def test_manifest_must_match_its_name(file_store: Store) -> None:
    name = _write(file_store, "dir", step=7)
    os.rename(file_store.resolve(name.path), file_store.resolve("step-0000000009.attempt-1"))
    result = verify(file_store, "step-0000000009.attempt-1", "size")
    assert not result.ok and "manifest describes step 7" in result.reason
    assert not verify(file_store, ".tmp.step-0000000009.attempt-1.x", "size").ok


def test_tar_corruptions_name_the_member(file_store: Store) -> None:
    name = _write(file_store, "tar")
    path = file_store.resolve(name.path)
    with tarfile.open(path) as tar:
        offset = tar.getmember("weights.bin").offset_data
    _flip(path, offset + 999)
    assert verify(file_store, name.path, "size").ok
    result = verify(file_store, name.path, "full")
    assert not result.ok and "weights.bin" in result.reason and "checksum" in result.reason
    _flip(path, offset + 999)

    with open(path, "r+b") as f:
        f.truncate(offset + 1000)  # cut inside the first member: manifest gone too
    result = verify(file_store, name.path, "size")
    assert not result.ok and name.path in result.reason


def _rewrite_with(path: str, extra: tarfile.TarInfo) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    os.unlink(path)
    with tarfile.open(path, "w") as tar:
        for info, data in [*members[:-1], (extra, b""), members[-1]]:
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["symlink", "unlisted"])
def test_tar_with_link_or_unlisted_member_fails(file_store: Store, kind: str) -> None:
    name = _write(file_store, "tar")
    extra = tarfile.TarInfo(kind)
    if kind == "symlink":
        extra.type, extra.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _rewrite_with(file_store.resolve(name.path), extra)
    result = verify(file_store, name.path, "size")
    assert not result.ok and kind in result.reason
    assert ("link" if kind == "symlink" else "not listed in the manifest") in result.reason


def test_manifest_model_rejects_inconsistency() -> None:
    entries = [
        FileEntry(path="a", size=1, checksum="00"),
        FileEntry(path="b/c", size=2, checksum="11"),
    ]
    m = Manifest.build(run="r", step=1, attempt=0, kind="weights", format="dir", files=entries)
    assert m.total_size == 3 and m.digest == compute_digest(entries)
    assert Manifest.from_bytes(m.to_bytes(), "x") == m
    for bad in ("../a", "/a", "a//b", MANIFEST_NAME):
        with pytest.raises(ValidationError):
            FileEntry(path=bad, size=0, checksum="")
    raw = json.loads(m.to_bytes())
    raw["files"].append(raw["files"][0])
    raw["total_size"] += 1
    with pytest.raises(ValueError, match="invalid manifest"):
        Manifest.from_bytes(json.dumps(raw).encode(), "x")


def test_world_size_and_shards_are_optional_and_absent_for_one_process() -> None:
    files = [FileEntry(path="rank-00001/model.safetensors", size=3, checksum="x")]
    fields = {"run": "r", "step": 1, "attempt": 0, "kind": "full", "files": files}
    single = Manifest.build(**fields, format="dir")  # type: ignore[arg-type]
    assert "world_size" not in json.loads(single.to_bytes())  # what older readers accept
    sharded = Manifest.build(**fields, format="dcp", world_size=2, shards=2)  # type: ignore[arg-type]
    again = Manifest.from_bytes(sharded.to_bytes(), "m")
    assert (again.world_size, again.shards, again.format) == (2, 2, "dcp")
    with pytest.raises(ValidationError):
        Manifest.build(**fields, format="dir", world_size=0)  # type: ignore[arg-type]
