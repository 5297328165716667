"""Write a checkpoint's files and commit them with one atomic step (invariant: atomic commit).

=========  ============================================================================
layout     commit protocol
=========  ============================================================================
dir, file  write ``.tmp.<name>.<id>/``, fsync every file and the directory, rename it to
           its final name, fsync the store root.
tar, file  write ``.tmp.<name>.<id>``, fsync, rename, fsync the store root.
tar, s3    stream one object to its final key; the object store makes it visible only
           when the (multipart) upload completes, so that completion is the commit and a
           crash leaves at most an incomplete upload (expire those with a bucket
           lifecycle rule).
dir, s3    object stores cannot rename a prefix: every file is written under the final
           prefix and the manifest LAST. Readers (SDK, operator) treat a directory
           without a manifest as uncommitted; the operator collects such leftovers.
=========  ============================================================================

A distributed save (:mod:`ckpt_operator.sdk.sharded`) uses the same sinks: every rank adds its
files (under its own sub-directory) to the one temporary directory or prefix, and only rank 0
commits or aborts.

Bytes are checksummed as they are written (no re-read) in cache-sized chunks, and tensors
are written from their own memory (no serialisation copy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from ckpt_operator.storage.layout import MANIFEST_NAME, CheckpointName
from ckpt_operator.storage.manifest import CHUNK, FileEntry, Manifest, new_hasher
from ckpt_operator.storage.store import Store, StoreError

Files = Mapping[str, tuple[Sequence[memoryview], int]]
_SMALL = 64 << 10


class CheckpointExistsError(StoreError):
    """The final name is taken; checkpoints are never overwritten."""


class _HashingOut:
    """Feeds bytes to ``write`` while checksumming them; coalesces small buffers."""

    def __init__(self, write: Callable[[memoryview], None]) -> None:
        self._write = write
        self._hasher = new_hasher()
        self._small = bytearray()
        self.size = 0

    def write(self, data: memoryview) -> None:
        if data.nbytes < _SMALL:
            self._small += data
            if len(self._small) >= _SMALL:
                self._flush_small()
            return
        self._flush_small()
        for start in range(0, data.nbytes, CHUNK):
            self._emit(data[start : start + CHUNK])

    def _flush_small(self) -> None:
        if self._small:
            self._emit(memoryview(self._small))
            self._small = bytearray()

    def _emit(self, chunk: memoryview) -> None:
        self._hasher.update(chunk)
        self._write(chunk)
        self.size += chunk.nbytes

    def finish(self) -> str:
        self._flush_small()
        return str(self._hasher.hexdigest())


def _fd_writer(fd: int) -> Callable[[memoryview], None]:
    def write(chunk: memoryview) -> None:
        while chunk:
            chunk = chunk[os.write(fd, chunk) :]

    return write


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_local_file(path: str, pieces: Sequence[memoryview]) -> tuple[int, str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        out = _HashingOut(_fd_writer(fd))
        for piece in pieces:
            out.write(piece)
        checksum = out.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    return out.size, checksum


class Sink:
    """Receives the files of one checkpoint, then commits (or aborts) it."""

    def add(self, name: str, pieces: Sequence[memoryview], size: int) -> FileEntry:
        raise NotImplementedError

    def flush(self) -> None:
        """Make the files added so far durable (a rank's part of a distributed save)."""

    def commit(self, manifest: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _LocalDir(Sink):
    def __init__(self, store: Store, tmp: str, final: str, *, create: bool = True) -> None:
        self._root = store.resolve("")
        self._tmp = store.resolve(tmp)
        self._final = store.resolve(final)
        self._subdirs: set[str] = set()
        if create:
            os.mkdir(self._tmp)

    def add(self, name: str, pieces: Sequence[memoryview], size: int) -> FileEntry:
        path = os.path.join(self._tmp, name)
        parent = os.path.dirname(path)
        if parent != self._tmp and parent not in self._subdirs:
            os.makedirs(parent, exist_ok=True)
            self._subdirs.add(parent)
        written, checksum = _write_local_file(path, pieces)
        return FileEntry(path=name, size=written, checksum=checksum)

    def flush(self) -> None:
        for subdir in sorted(self._subdirs, reverse=True):  # deepest first
            _fsync_dir(subdir)

    def commit(self, manifest: bytes) -> None:
        _write_local_file(os.path.join(self._tmp, MANIFEST_NAME), [memoryview(manifest)])
        self.flush()
        _fsync_dir(self._tmp)
        os.rename(self._tmp, self._final)  # refuses a non-empty final directory
        _fsync_dir(self._root)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


class _Tar(Sink):
    """Streams an uncompressed tar: headers from ``tarfile``, data straight from buffers."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self._out = out
        self._mtime = int(time.time())
        self._written = 0

    def _raw(self, data: memoryview) -> None:
        assert self._out is not None
        self._out.write(data)

    def _member(self, name: str, pieces: Sequence[memoryview], size: int) -> tuple[int, str]:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, self._mtime
        self._emit(memoryview(info.tobuf(tarfile.PAX_FORMAT)))
        out = _HashingOut(self._emit)
        for piece in pieces:
            out.write(piece)
        checksum = out.finish()
        if out.size != size:
            raise ValueError(f"{name}: wrote {out.size} bytes, announced {size}")
        self._emit(memoryview(bytes(-size % tarfile.BLOCKSIZE)))
        return out.size, checksum

    def _emit(self, data: memoryview) -> None:
        self._raw(data)
        self._written += data.nbytes

    def add(self, name: str, pieces: Sequence[memoryview], size: int) -> FileEntry:
        written, checksum = self._member(name, pieces, size)
        return FileEntry(path=name, size=written, checksum=checksum)

    def _finish(self, manifest: bytes) -> None:
        self._member(MANIFEST_NAME, [memoryview(manifest)], len(manifest))
        end = 2 * tarfile.BLOCKSIZE
        end += -(self._written + end) % tarfile.RECORDSIZE
        self._emit(memoryview(bytes(end)))


class _LocalTar(_Tar):
    def __init__(self, store: Store, tmp: str, final: str) -> None:
        super().__init__()
        self._root = store.resolve("")
        self._tmp = store.resolve(tmp)
        self._final = store.resolve(final)
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._write_fd = _fd_writer(self._fd)

    def _raw(self, data: memoryview) -> None:
        self._write_fd(data)

    def commit(self, manifest: bytes) -> None:
        self._finish(manifest)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.rename(self._tmp, self._final)
        _fsync_dir(self._root)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class _RemoteTar(_Tar):
    def __init__(self, store: Store, final: str) -> None:
        super().__init__(store.open(final, "wb", block_size=64 << 20))

    def commit(self, manifest: bytes) -> None:
        assert self._out is not None
        self._finish(manifest)
        self._out.close()  # completing the upload is the commit

    def abort(self) -> None:
        assert self._out is not None
        discard: Callable[[], None] | None = getattr(self._out, "discard", None)
        if discard is not None:
            discard()  # abort the multipart upload: nothing becomes visible


class _RemoteDir(Sink):
    def __init__(self, store: Store, final: str) -> None:
        self._store = store
        self._final = final

    def _put(self, name: str, pieces: Sequence[memoryview]) -> tuple[int, str]:
        with self._store.open(f"{self._final}/{name}", "wb", block_size=64 << 20) as f:
            out = _HashingOut(f.write)  # type: ignore[arg-type]
            for piece in pieces:
                out.write(piece)
            checksum = out.finish()
        return out.size, checksum

    def add(self, name: str, pieces: Sequence[memoryview], size: int) -> FileEntry:
        written, checksum = self._put(name, pieces)
        return FileEntry(path=name, size=written, checksum=checksum)

    def commit(self, manifest: bytes) -> None:
        self._put(MANIFEST_NAME, [memoryview(manifest)])  # last: its presence is the commit

    def abort(self) -> None:
        self._store.remove(self._final)


def prepare(store: Store, name: CheckpointName) -> str:
    """Check that ``name`` is free and the root exists; returns a fresh unique temporary id."""
    if store.exists(name.path):
        raise CheckpointExistsError(f"{store.uri(name.path)} already exists; not overwriting")
    store.ensure_root()
    return uuid.uuid4().hex[:12]


def open_sink(store: Store, name: CheckpointName, unique: str, *, create: bool = True) -> Sink:
    """Where ``name``'s files go; ``create=False`` joins a directory another rank created."""
    if store.is_local:
        tmp = name.temporary_path(unique)
        if name.format == "tar":
            return _LocalTar(store, tmp, name.path)
        return _LocalDir(store, tmp, name.path, create=create)
    return _RemoteTar(store, name.path) if name.format == "tar" else _RemoteDir(store, name.path)


def write_checkpoint(
    store: Store,
    name: CheckpointName,
    files: Files,
    *,
    run: str,
    metrics: Mapping[str, float] | None = None,
) -> Manifest:
    """Write ``files`` as checkpoint ``name`` and commit it; on any error nothing is committed."""
    sink = open_sink(store, name, prepare(store, name))
    try:
        entries = [sink.add(fname, pieces, size) for fname, (pieces, size) in files.items()]
        manifest = Manifest.build(
            run=run,
            step=name.step,
            attempt=name.attempt,
            kind=name.kind,
            format=name.format,
            files=entries,
            metrics=dict(metrics or {}),
        )
        sink.commit(manifest.to_bytes())
    except BaseException:
        sink.abort()
        raise
    return manifest
