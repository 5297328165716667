"""Kill the writer at random points: no committed checkpoint is ever partial, and restore
never picks a partial one (invariant: atomic commit).

Children are forked from this already-imported process, so a trial costs milliseconds.
Most trials kill at each write (half-way through it), fsync, rename, … in turn, so every
point of the commit protocol is hit; the rest kill at a random time from outside.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.storage.layout import parse_committed
from ckpt_operator.storage.manifest import verify
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.s3 import S3Server

_OPS = ("write", "fsync", "rename", "mkdir", "open")


def _run_child(body: Callable[[], None]) -> int:
    """Fork, run ``body`` in the child, and return the child's wait status."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("a crash-injection child hung")


def _kill_at(op_index: int) -> None:
    """Make this (child) process SIGKILL itself at its ``op_index``-th file operation."""
    count = [0]

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def op(*args: Any) -> Any:
            count[0] += 1
            if count[0] == op_index:
                if name == "write" and len(args[1]) > 1:
                    real(args[0], args[1][: len(args[1]) // 2])  # die half-way through
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)

        return op

    for name in _OPS:
        setattr(os, name, wrap(name, getattr(os, name)))


def _training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Computed in the parent: torch's thread pools do not survive fork, so children must
    not run kernels, only save."""
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 256))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    optimizer.step()
    return model, optimizer


MODEL, OPTIMIZER = _training_state()


def _save(store: Store, step: int, fmt: str) -> None:
    CheckpointManager(store, attempt=1, format=fmt).save(  # type: ignore[arg-type]
        step, model=MODEL, optimizer=OPTIMIZER, extra={"step": step}
    )


def _count_ops(store: Store, fmt: str) -> int:
    counter_file = store.resolve("") + f"/../ops-{fmt}"

    def body() -> None:
        count = [0]
        for name in _OPS:
            real = getattr(os, name)

            def op(*args: Any, _real: Callable[..., Any] = real) -> Any:
                count[0] += 1
                return _real(*args)

            setattr(os, name, op)
        _save(store, 999, fmt)
        for name, real in zip(_OPS, saved, strict=True):
            setattr(os, name, real)
        with open(counter_file, "w") as f:
            f.write(str(count[0]))

    saved = [getattr(os, name) for name in _OPS]
    assert _run_child(body) == 0
    store.remove(f"step-0000000999.attempt-1{'.tar' if fmt == 'tar' else ''}")
    with open(counter_file) as f:
        return int(f.read())


def _check_store(store: Store, steps_committed_before: set[int]) -> None:
    """Every committed entry verifies in full; restore picks a verified one."""
    committed = set()
    for entry in store.list_entries():
        name = parse_committed(entry)
        if name is None:
            continue
        result = verify(store, entry, "full")
        if not result.ok and name.format == "dir" and not store.is_local:
            assert "MANIFEST.json is missing" in result.reason  # uncommitted s3 dir
            continue
        assert result.ok, f"committed checkpoint {entry} is partial: {result.reason}"
        committed.add(name.step)
    assert steps_committed_before <= committed
    model, optimizer = _training_state()
    step = CheckpointManager(store).restore(model=model, optimizer=optimizer, restore_rng=False)
    assert step == max(committed)


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_kill_at_every_kind_of_point(file_store: Store, fmt: str) -> None:
    _save(file_store, 1, fmt)
    total = _count_ops(file_store, fmt)
    assert total > 5
    points = range(1, total + 1)  # every write (killed half-way), fsync, rename, …
    for index, point in enumerate(points):
        step = 100 + index

        def body(point: int = point, step: int = step) -> None:
            _kill_at(point)
            _save(file_store, step, fmt)

        status = _run_child(body)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        _check_store(file_store, {1})
    assert len(points) >= 25


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_kill_at_random_times(tmp_path: Any, fmt: str) -> None:
    store = Store.from_uri(f"file://{tmp_path}/run")
    rng = random.Random(f"time-{fmt}")
    _save(store, 1, fmt)
    for trial in range(6):

        def body(first: int = 10 * (trial + 1)) -> None:
            for step in range(first, first + 10):
                _save(store, step, fmt)

        pid_status: list[int] = []
        pid = os.fork()
        if pid == 0:
            try:
                body()
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        pid_status.append(os.waitpid(pid, 0)[1])
        _check_store(store, {1})


def test_kill_during_s3_uploads(s3: S3Server) -> None:
    rng = random.Random("s3")
    for fmt in ("tar", "dir"):
        store = Store.from_uri(s3.uri(f"crash/{fmt}"), storage_options=s3.storage_options)
        _save(store, 1, fmt)
        for trial in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    for step in range(10 * (trial + 1), 10 * (trial + 2)):
                        _save(store, step, fmt)
                finally:
                    os._exit(0)
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            _check_store(store, {1})
