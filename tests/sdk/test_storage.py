"""The confined store: every path stays inside the run's root (invariant: confined paths)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckpt_operator.storage.store import PathEscapeError, Store, StoreError


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("../other", "contains '..'"),
        ("a/../../x", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("a\\b", "contains a backslash"),
        ("a\x00b", "NUL byte"),
    ],
)
def test_resolve_refuses_escapes_naming_path_and_reason(
    any_store: Store, rel: str, reason: str
) -> None:
    with pytest.raises(PathEscapeError) as err:
        any_store.resolve(rel)
    assert repr(rel) in str(err.value) and reason in str(err.value)


def test_resolve_refuses_symlink_leaving_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store.from_uri(f"file://{tmp_path}/run")
    store.ensure_root()
    os.symlink(outside, tmp_path / "run" / "link")
    with pytest.raises(PathEscapeError, match=r"'link/x'.*symlink"):
        store.resolve("link/x")
    os.symlink(tmp_path / "run", tmp_path / "run" / "self")
    assert store.resolve("self/x").endswith("/run/self/x")  # stays inside: fine


def test_allowed_roots(tmp_path: Path) -> None:
    Store.from_uri(f"file://{tmp_path}/a/run", allowed_roots=[f"file://{tmp_path}/a"])
    Store.from_uri("s3://b/runs/x", allowed_roots=["s3://b/runs/"])
    for uri, allowed in [
        (f"file://{tmp_path}/ab/run", [f"file://{tmp_path}/a"]),
        ("s3://b/runs2/x", ["s3://b/runs"]),
        ("s3://other/runs/x", ["s3://b/runs"]),
        (f"file://{tmp_path}/a", ["s3://b/"]),
    ]:
        with pytest.raises(StoreError, match="not inside any allowed root"):
            Store.from_uri(uri, allowed_roots=allowed)


@pytest.mark.parametrize("uri", ["http://x/y", "file://host/x", "s3:///x", "file:///a/../b"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(StoreError):
        Store.from_uri(uri)


def test_uri_round_trip_and_refusal(any_store: Store) -> None:
    uri = any_store.uri("step-1/x")
    assert uri.startswith(any_store.root_uri + "/")
    assert any_store.rel_from_uri(uri) == "step-1/x"
    with pytest.raises(PathEscapeError, match="outside the store root"):
        any_store.rel_from_uri(any_store.root_uri + "-sibling/x")
    with pytest.raises(PathEscapeError):
        any_store.rel_from_uri(any_store.root_uri + "/../x")


def test_listing_sizes_and_removal(any_store: Store) -> None:
    assert any_store.list_entries() == []
    for rel, data in [("d/a", b"12345"), ("d/sub/b", b"123"), ("f", b"1")]:
        with any_store.open(rel, "wb") as f:
            f.write(data)
    assert any_store.list_entries() == ["d", "f"]
    assert any_store.exists("d/a") and not any_store.exists("nope")
    assert any_store.size("d/a") == 5 and any_store.du("d") == 8
    assert any_store.modified("d").tzinfo is not None
    any_store.remove("d")
    any_store.remove("d")  # already gone: still success
    assert any_store.list_entries() == ["f"]
    with pytest.raises(PathEscapeError, match="store root itself"):
        any_store.remove("")
