"""Where control-plane binaries come from: KUBEBUILDER_ASSETS, then PATH, then the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_operator.testing import binaries


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_kubebuilder_assets_win_over_path_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPT_OPERATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "assets"))
    cached = _exe(binaries.cache_dir() / "etcd")
    on_path = _exe(tmp_path / "path" / "etcd")
    assets = _exe(tmp_path / "assets" / "etcd")
    assert binaries.find_binary("etcd") == assets
    assets.unlink()
    assert binaries.find_binary("etcd") == on_path
    on_path.unlink()
    assert binaries.find_binary("etcd") == cached


def test_cache_is_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_OPERATOR_CACHE", str(tmp_path))
    assert binaries.cache_dir("1.2.3") == tmp_path / "k8s" / "v1.2.3"


def test_found_binaries_are_not_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_OPERATOR_CACHE", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _exe(binaries.cache_dir() / "kwok")
    monkeypatch.setattr(binaries, "_build", lambda *a: pytest.fail("must not build"))
    assert binaries.ensure_binaries(["kwok"]) == {"kwok": binaries.cache_dir() / "kwok"}


def test_unknown_binary_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown binaries"):
        binaries.ensure_binaries(["kubelet-but-not-really"])
