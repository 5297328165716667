"""Asynchronous saves: staged copies, a bounded queue, errors surfaced by wait()."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.sdk import manager as manager_module
from ckpt_operator.storage.store import Store


def test_async_save_snapshots_state_before_returning(any_store: Store) -> None:
    model = torch.nn.Linear(256, 256)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with CheckpointManager(any_store) as saver:
        saver.save(1, model=model, blocking=False)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # training goes on while the copy is written
        saver.wait()
    fresh = torch.nn.Linear(256, 256)
    assert CheckpointManager(any_store).restore(model=fresh) == 1
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key])


def test_bounded_queue_blocks_and_errors_surface(
    file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = manager_module.write_checkpoint  # type: ignore[attr-defined]

    def slow(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_module, "write_checkpoint", slow)
    saver = CheckpointManager(file_store, max_pending=1)
    model = torch.nn.Linear(4, 4)
    saver.save(1, model=model, blocking=False)  # being written (held at the gate)
    time.sleep(0.1)
    saver.save(2, model=model, blocking=False)  # waits in the queue
    third = threading.Thread(
        target=saver.save, args=(3,), kwargs={"model": model, "blocking": False}
    )
    third.start()
    time.sleep(0.3)
    assert third.is_alive()  # the queue is full: the third save blocks
    gate.set()
    third.join(10)
    saver.wait()
    assert file_store.list_entries() == [
        "step-0000000001.attempt-0",
        "step-0000000002.attempt-0",
        "step-0000000003.attempt-0",
    ]

    saver.save(3, model=model, blocking=False)  # the name is taken: fails in the background
    with pytest.raises(RuntimeError, match="asynchronous") as err:
        saver.wait()
    assert "already exists" in str(err.value.__cause__)
    saver.close()
