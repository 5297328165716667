"""Malicious tars are refused before anything is written, naming the bad member."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt_operator.sdk.safetar import UnsafeTarError, safe_extract


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


BAD: dict[str, Callable[[Path], tuple[tarfile.TarInfo, bytes | None]]] = {
    "absolute": lambda out: _file(str(out / "abs-victim")),
    "dotdot": lambda out: _file("../victim"),
    "nested-dotdot": lambda out: _file("ok/../../victim"),
    "symlink-out": lambda out: _special("link", tarfile.SYMTYPE, str(out)),
    "symlink-relative": lambda out: _special("link", tarfile.SYMTYPE, "../.."),
    "hardlink-out": lambda out: _special("hard", tarfile.LNKTYPE, str(out / "victim")),
    "char-device": lambda out: _special("dev", tarfile.CHRTYPE),
    "block-device": lambda out: _special("blk", tarfile.BLKTYPE),
    "fifo": lambda out: _special("fifo", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malicious_member_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    bad = BAD[case](outside)
    archive = _tar(tmp_path / "evil.tar", _file("good.txt"), bad, _file("after.txt"))
    with pytest.raises(UnsafeTarError) as err:
        safe_extract(str(archive), str(dest))
    assert repr(bad[0].name) in str(err.value)
    assert os.listdir(outside) == []
    assert not (tmp_path / "victim").exists()
    assert os.listdir(dest) == []  # refused as a whole: not even the good members


def test_symlink_planted_in_destination_is_not_followed(tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    os.symlink(outside, dest / "planted")
    archive = _tar(tmp_path / "a.tar", _file("planted/x"))
    with pytest.raises(UnsafeTarError, match="resolves outside"):
        safe_extract(str(archive), str(dest))
    assert os.listdir(outside) == []


def test_plain_archive_extracts(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", _file("a.txt", b"hello"), _file("sub/b.txt", b"hi"))
    with open(archive, "rb") as f:
        names = safe_extract(f, str(tmp_path / "out"))
    assert names == ["a.txt", "sub/b.txt"]
    assert (tmp_path / "out/sub/b.txt").read_bytes() == b"hi"
