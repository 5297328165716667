"""torch.distributed.checkpoint (DCP) through the store: a DCP checkpoint is a Checkpoint.

:class:`CheckpointWriter` and :class:`CheckpointReader` subclass torch's own
``FileSystemWriter``/``FileSystemReader`` and change only what the store's invariants need:

* Every rank writes its ``.distcp`` files into one temporary directory (rank 0 broadcast its
  id); a file system wrapper checksums each file as torch writes it (no re-read). The size and
  checksum ride back to the coordinator inside DCP's own write results, and ``finish`` (rank 0)
  writes ``.metadata``, then the manifest listing every file, and commits with the same
  rename as a native checkpoint. A rank that fails or dies means ``finish`` never runs: nothing
  is committed, the temporary is removed by rank 0 or by the operator's orphan sweep.
* Stock DCP pickles ``.metadata`` (protocol 4) and ``pickle.load``s it unrestricted. Here it is
  written with pickle protocol 2, which torch's weights-only unpickler reads, and read back only
  after its checksum matched the manifest, through that unpickler with an allow-list of DCP's
  metadata classes (:data:`SAFE_METADATA`). Stock DCP readers still read it (any protocol).
* ``.distcp`` files are read whole and checked against the manifest before any item in them is
  parsed (tensors are ``torch.load``-ed weights-only by torch already); non-tensor items, which
  the default planner unpickles unrestricted, must first load weights-only.

Only file:// stores: torch's fsspec writer could carry this to object stores later.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch._weights_only_unpickler import load as weights_only_load
from torch.distributed.checkpoint import metadata as md
from torch.distributed.checkpoint.filesystem import (
    CURRENT_DCP_VERSION,
    DEFAULT_SUFFIX,
    FileSystem,
    FileSystemReader,
    FileSystemWriter,
    _StorageInfo,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ckpt_operator.sdk.writer import open_sink
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.storage.manifest import (
    FileEntry,
    Manifest,
    VerifyError,
    check_entry,
    new_hasher,
)
from ckpt_operator.storage.store import Store, StoreError

METADATA_FILE = ".metadata"
SAFE_METADATA: list[Any] = [
    md.Metadata,
    md.MetadataIndex,
    md.StorageMeta,
    md.TensorStorageMetadata,
    md.BytesStorageMetadata,
    md.ChunkStorageMetadata,
    md.TensorProperties,
    md._MEM_FORMAT_ENCODING,
    _StorageInfo,
]
"""The classes a DCP ``.metadata`` holds: all the weights-only unpickler may build beyond
plain data."""

__all__ = ["SAFE_METADATA", "CheckpointReader", "CheckpointWriter", "load_metadata"]


class _HashingStream(io.RawIOBase):
    """A writable file that checksums what passes through it."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self.hasher = new_hasher()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        self.size += view.nbytes
        written: int = self._raw.write(view)
        return written

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return int(self._raw.fileno())


class _HashingFileSystem(FileSystem):
    """torch's local file system; remembers each written file's size and checksum by name."""

    def __init__(self) -> None:
        self.written: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()  # DCP may write with several threads

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        with super().create_stream(path, mode) as raw:
            stream = _HashingStream(raw)
            yield stream
        with self._lock:
            self.written[Path(path).name] = (stream.size, stream.hasher.hexdigest())


@dataclasses.dataclass
class _Checked:
    """A write result's storage info plus its whole file's size and checksum."""

    info: _StorageInfo
    file_size: int
    file_checksum: str


class CheckpointWriter(FileSystemWriter):
    """Writes one DCP checkpoint into ``name``'s temporary directory; rank 0 commits it.

    ``unique`` must be the same on every rank (``CheckpointManager.save_dcp`` broadcasts it).
    ``on_commit`` runs on rank 0 with the manifest once the checkpoint is committed.
    """

    def __init__(
        self,
        store: Store,
        name: CheckpointName,
        unique: str,
        *,
        run: str,
        metrics: Mapping[str, float] | None = None,
        on_commit: Callable[[Manifest], None] | None = None,
        **options: Any,
    ) -> None:
        if not store.is_local or name.format != "dcp":
            raise ValueError("DCP checkpoints need a file:// store and a name of format 'dcp'")
        self.tmp = name.temporary_path(unique)
        super().__init__(store.resolve(self.tmp), overwrite=False, **options)
        self.fs: _HashingFileSystem = _HashingFileSystem()
        self._store, self._name, self._unique, self._run = store, name, unique, run
        self._metrics = dict(metrics or {})
        self._on_commit = on_commit

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        if not self.use_collectives:
            raise ValueError("use_collectives=False writes per-rank metadata: not supported")

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        results = super().write_data(plan, planner).value()  # torch writes synchronously
        checked = []
        for result in results:
            info = cast(_StorageInfo, result.storage_data)
            size, checksum = self.fs.written[info.relative_path]
            checked.append(dataclasses.replace(result, storage_data=_Checked(info, size, checksum)))
        used = {cast(_Checked, r.storage_data).info.relative_path for r in checked}
        for unused in sorted(set(self.fs.written) - used):  # a rank or thread with no items
            os.unlink(os.path.join(self.path, unused))
        done: Future[list[WriteResult]] = Future()
        done.set_result(checked)
        return done

    def finish(self, metadata: md.Metadata, results: list[list[WriteResult]]) -> None:
        """Rank 0: write ``.metadata`` (protocol 2) and the manifest, then commit."""
        files: dict[str, tuple[int, str]] = {}
        storage: dict[md.MetadataIndex, _StorageInfo] = {}
        for rank_results in results:
            for result in rank_results:
                checked = cast(_Checked, result.storage_data)
                files[checked.info.relative_path] = (checked.file_size, checked.file_checksum)
                storage[result.index] = checked.info
        # What torch's finish does, but pickled with protocol 2 and a plain-string id.
        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = storage
        metadata.storage_meta = md.StorageMeta(
            checkpoint_id=self._store.uri(self._name.path), save_id=self.save_id
        )
        with self.fs.create_stream(os.path.join(self.path, METADATA_FILE), "wb") as out:
            pickle.dump(metadata, out, protocol=2)
            out.flush()
            os.fsync(out.fileno())
        files[METADATA_FILE] = self.fs.written[METADATA_FILE]
        entries = [FileEntry(path=p, size=s, checksum=c) for p, (s, c) in sorted(files.items())]
        manifest = Manifest.build(
            run=self._run,
            step=self._name.step,
            attempt=self._name.attempt,
            kind=self._name.kind,
            format="dcp",
            files=entries,
            metrics=self._metrics,
            world_size=len(results),
            shards=sum(p.endswith(DEFAULT_SUFFIX) for p in files),
        )
        open_sink(self._store, self._name, self._unique, create=False).commit(manifest.to_bytes())
        if self._on_commit is not None:
            self._on_commit(manifest)


def load_metadata(data: bytes) -> md.Metadata:
    """A ``.metadata`` unpickled weights-only, with DCP's metadata classes allowed."""
    with torch.serialization.safe_globals(SAFE_METADATA):
        metadata = weights_only_load(io.BytesIO(data))
    if not isinstance(metadata, md.Metadata):
        raise pickle.UnpicklingError(f"{METADATA_FILE} holds a {type(metadata).__name__}")
    return metadata


def _check_file_name(where: str, name: str) -> None:
    """A file DCP's metadata names must be a plain file name inside the checkpoint."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if name in ("", ".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise VerifyError(f"{where}: DCP metadata names file {name!r}, outside the checkpoint")


class _VerifyingFileSystem(FileSystem):
    """Reads whole files, checked against the manifest, before DCP parses anything in them.

    The names come from ``.metadata`` (``relative_path``), i.e. from the checkpoint itself:
    only plain file names in the checkpoint's directory are read, through the store (which
    refuses symlinks out of it), never a path torch builds from them.
    """

    def __init__(self, manifest: Manifest, store: Store, rel_path: str) -> None:
        self._entries = {entry.path: entry for entry in manifest.files}
        self._store = store
        self._where = rel_path
        self._dir = os.path.normpath(store.resolve(rel_path))

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        _check_file_name(self._where, suffix)
        return os.path.join(path, suffix)

    def read_verified(self, path: str | os.PathLike[str]) -> bytes:
        directory, name = os.path.split(os.fspath(path))
        _check_file_name(self._where, name)
        if os.path.normpath(directory) != self._dir:
            raise VerifyError(f"{self._where}: DCP asked for {os.fspath(path)!r}, outside it")
        entry = self._entries.get(name)
        if entry is None:
            raise pickle.UnpicklingError(f"{self._where}/{name} is not listed in the manifest")
        try:
            with self._store.open(f"{self._where}/{name}") as f:
                data = f.read()
        except StoreError as exc:  # a symlink out of the store
            raise VerifyError(f"{self._where}/{name}: {exc}") from exc
        hasher = new_hasher()
        hasher.update(data)
        check_entry(f"{self._where}/{name}", entry, len(data), hasher.hexdigest())
        return data

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        if "r" not in mode:
            raise PermissionError(f"{path}: a committed checkpoint is read-only")
        yield io.BytesIO(self.read_verified(path))


class _WeightsOnlyBytes:
    """The planner, except that non-tensor items must load weights-only before it sees them;
    also tells ``reader`` once anything is about to be written into the caller's state."""

    def __init__(self, planner: LoadPlanner, reader: CheckpointReader) -> None:
        self._planner = planner
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        self._reader.wrote = True  # torch copies into what this returns
        return self._planner.resolve_tensor(read_item)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but plain data and tensors
        value.seek(0)
        self._reader.wrote = True
        self._planner.load_bytes(read_item, value)


class CheckpointReader(FileSystemReader):
    """Reads a committed DCP checkpoint whose ``manifest`` the caller has read."""

    def __init__(self, store: Store, rel_path: str, manifest: Manifest) -> None:
        super().__init__(store.resolve(rel_path))
        self.fs: _VerifyingFileSystem = _VerifyingFileSystem(manifest, store, rel_path)
        self._rel_path = rel_path
        self.wrote = False
        """Whether loading began writing into the caller's state dict (so a failure leaves
        it partly overwritten)."""
        self._metadata: md.Metadata | None = None

    def check_metadata(self) -> md.Metadata:
        """Verify and load ``.metadata``, raising its own error (DCP would rewrap it)."""
        if self._metadata is None:
            data = self.fs.read_verified(os.path.join(self.path, METADATA_FILE))
            metadata = load_metadata(data)
            for info in (metadata.storage_data or {}).values():
                name = info.relative_path if isinstance(info, _StorageInfo) else None
                if not isinstance(name, str):
                    raise VerifyError(f"{self._rel_path}: DCP metadata holds no file name")
                _check_file_name(self._rel_path, name)
            self._metadata = metadata
        return self._metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> md.Metadata:
        if kwargs.get("rank") is not None:
            raise ValueError("per-rank DCP metadata (use_collectives=False) is not supported")
        metadata = self.check_metadata()
        metadata.storage_meta = metadata.storage_meta or md.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        return super().read_data(plan, cast(LoadPlanner, _WeightsOnlyBytes(planner, self)))
