"""One confined view of a run's checkpoint store, shared by the SDK and the operator.

Everything goes through fsspec so ``file://`` and ``s3://`` behave alike. A :class:`Store` is
rooted at the run's ``CKPT_STORE`` URI and refuses any path that would resolve outside it
(``..``, absolute names, symlinks leaving the root): confined paths. The root
itself must lie inside one of the operator's allowed roots when those are given.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec


class StoreError(Exception):
    """The store cannot be used as asked (bad URI, root outside the allowed roots, …)."""


class PathEscapeError(StoreError):
    """A path would resolve outside the store root."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"refusing path {path!r}: {reason}")
        self.path = path
        self.reason = reason


def _parse_uri(uri: str) -> tuple[str, str]:
    """``(protocol, fs_path)`` of a ``file://`` or ``s3://`` URI, the path normalised."""
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise StoreError(f"store URI {uri!r} must not carry a query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file URI {uri!r} names a host; use file:///absolute/path")
        if not parts.path.startswith("/"):
            raise StoreError(f"file URI {uri!r} must hold an absolute path")
        return "file", "/" + _clean(parts.path.lstrip("/"), uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreError(f"s3 URI {uri!r} names no bucket")
        prefix = _clean(parts.path.lstrip("/"), uri)
        return "s3", f"{parts.netloc}/{prefix}" if prefix else parts.netloc
    raise StoreError(f"unsupported store URI {uri!r}: expected file:///… or s3://bucket/prefix")


def _clean(rel: str, shown: str) -> str:
    """``rel`` without empty or ``.`` parts; refuses anything that could climb out."""
    if "\x00" in rel:
        raise PathEscapeError(shown, "contains a NUL byte")
    if "\\" in rel:
        raise PathEscapeError(shown, "contains a backslash")
    if rel.startswith("/"):
        raise PathEscapeError(shown, "is absolute")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathEscapeError(shown, "contains '..'")
    return "/".join(parts)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _uri(protocol: str, path: str) -> str:
    return f"file://{path}" if protocol == "file" else f"s3://{path}"


class Store:
    """A run's checkpoint root; every relative path handed in stays inside it."""

    def __init__(self, fs: fsspec.AbstractFileSystem, protocol: str, root_path: str) -> None:
        self.fs = fs
        self.protocol = protocol
        self.root_path = root_path
        self.root_uri = _uri(protocol, root_path)

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        allowed_roots: Sequence[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Store:
        """Open the store at ``uri``; s3 credentials and endpoint come in ``storage_options``."""
        protocol, root = _parse_uri(uri.rstrip("/") or uri)
        if allowed_roots is not None:
            ok = False
            for allowed in allowed_roots:
                a_protocol, a_root = _parse_uri(allowed.rstrip("/") or allowed)
                if protocol == "file" == a_protocol:
                    ok = ok or _inside(os.path.realpath(root), os.path.realpath(a_root))
                else:
                    ok = ok or (a_protocol == protocol and _inside(root, a_root))
            if not ok:
                raise StoreError(
                    f"store root {_uri(protocol, root)} is not inside any allowed root "
                    f"({', '.join(allowed_roots) or 'none configured'})"
                )
        options = dict(storage_options or {})
        if protocol == "s3":
            # Other writers (trainer pods, the operator) change the store behind our back.
            options.setdefault("use_listings_cache", False)
        return cls(fsspec.filesystem(protocol, **options), protocol, root)

    @property
    def is_local(self) -> bool:
        """True when paths from :meth:`resolve` are local paths usable with ``os``."""
        return self.protocol == "file"

    @functools.cached_property
    def _real_root(self) -> str:
        """The root with symlinks resolved, once per store: a root moved behind a symlink
        later only makes paths resolve outside it (refused), never inside."""
        return os.path.realpath(self.root_path)

    def resolve(self, rel: str) -> str:
        """The filesystem path of ``rel``, refused unless it stays inside the root."""
        clean = _clean(rel, rel)
        path = f"{self.root_path}/{clean}" if clean else self.root_path
        if self.is_local and not _inside(os.path.realpath(path), self._real_root):
            raise PathEscapeError(rel, f"resolves outside {self.root_uri} through a symlink")
        return path

    def uri(self, rel: str) -> str:
        return _uri(self.protocol, self.resolve(rel))

    def rel_from_uri(self, uri: str) -> str:
        """The path of ``uri`` relative to the root; refuses URIs outside the root."""
        protocol, path = _parse_uri(uri)
        if protocol != self.protocol or not _inside(path, self.root_path):
            raise PathEscapeError(uri, f"is outside the store root {self.root_uri}")
        rel = path[len(self.root_path) :].lstrip("/")
        self.resolve(rel)
        return rel

    def ensure_root(self) -> None:
        """Create the root directory (object stores have none to create)."""
        if self.is_local:
            os.makedirs(self.root_path, exist_ok=True)

    def list_entries(self) -> list[str]:
        """Names directly under the root, files and directories alike."""
        try:
            found = self.fs.ls(self.root_path, detail=False)
        except FileNotFoundError:
            return []
        names = {posixpath.basename(str(p).rstrip("/")) for p in found}
        return sorted(n for n in names if n)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.resolve(rel)))

    def isdir(self, rel: str) -> bool:
        return bool(self.fs.isdir(self.resolve(rel)))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
        """Open a file; writing creates missing parent directories, as on object stores."""
        path = self.resolve(rel)
        if self.is_local and "r" not in mode:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
        file: IO[bytes] = self.fs.open(path, mode, **kwargs)
        return file

    def size(self, rel: str) -> int:
        """Size in bytes of one file."""
        return int(self.fs.size(self.resolve(rel)))

    def du(self, rel: str) -> int:
        """Bytes used by a file or everything under a directory."""
        return int(self.fs.du(self.resolve(rel), total=True))

    def modified(self, rel: str) -> datetime:
        """Last modification of a file, or of the newest file under a directory."""
        path = self.resolve(rel)
        infos = [self.fs.info(path)]
        if infos[0]["type"] == "directory":
            infos += list(self.fs.find(path, detail=True, withdirs=True).values())
        stamps = [_mtime(i) for i in infos]
        known = [s for s in stamps if s is not None]
        if not known:
            raise StoreError(f"{self.uri(rel)} has no modification time")
        return max(known)

    def remove(self, rel: str) -> None:
        """Delete a file or a directory tree; a path already gone counts as success."""
        path = self.resolve(rel)
        if path == self.root_path:
            raise PathEscapeError(rel, "refers to the store root itself")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)


def as_store(store: str | Store, storage_options: Mapping[str, Any] | None = None) -> Store:
    """``store`` itself, or the store at that URI (no allowed roots: the SDK's own choice)."""
    if isinstance(store, Store):
        return store
    return Store.from_uri(store, storage_options=storage_options)


def _mtime(info: Mapping[str, Any]) -> datetime | None:
    """fsspec reports times per backend: ``mtime`` (local, float) or ``LastModified`` (s3)."""
    if isinstance(info.get("LastModified"), datetime):
        stamp: datetime = info["LastModified"]
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    if isinstance(info.get("mtime"), int | float):
        return datetime.fromtimestamp(info["mtime"], UTC)
    return None
