"""Committed checkpoints for tests and benchmarks, written by the SDK's own writer, no torch.

The files are small opaque blobs, but the manifest, the commit and the names are exactly what
the SDK produces, so the operator verifies, scans and deletes them as real ones.
"""

from __future__ import annotations

from pathlib import Path

from ckpt_operator.api.names import Format, Kind
from ckpt_operator.sdk.writer import write_checkpoint as commit
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.storage.store import Store


def write_checkpoint(
    store: Store | Path,
    run: str,
    step: int,
    attempt: int = 0,
    fmt: Format = "dir",
    *,
    kind: Kind = "full",
    payload: bytes = b"weights" * 100,
    metrics: dict[str, float] | None = None,
) -> str:
    """Write and commit a checkpoint of ``run`` in ``store``; returns its path in the store."""
    if isinstance(store, Path):
        store = Store.from_uri(f"file://{store}")
    name = CheckpointName(step, attempt, fmt, kind)
    files = {
        "model.bin": payload,
        "meta.json": b'{"step": %d}' % step,
    }
    buffers = {f: ([memoryview(data)], len(data)) for f, data in files.items()}
    commit(store, name, buffers, run=run, metrics=metrics)
    return name.path
