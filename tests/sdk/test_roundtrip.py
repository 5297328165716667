"""Training resumed from a checkpoint continues bit-identically to uninterrupted training."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.sdk import CheckpointManager
from ckpt_operator.storage.store import Store
from tests.sdk.training import Trainer, reseed


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_resume_continues_bit_identically(any_store: Store, fmt: str) -> None:
    reseed(1)
    expected = Trainer(seed=0).run(12)

    reseed(1)
    first = Trainer(seed=0)
    losses = first.run(6)
    saver = CheckpointManager(any_store, run="r", attempt=1, format=fmt)  # type: ignore[arg-type]
    saver.save(
        6,
        model=first.model,
        optimizer=first.optimizer,
        scheduler=first.scheduler,
        extra={"losses": losses, "note": ("a", 1)},
        metrics={"loss": losses[-1]},
    )
    reseed(99)
    first.run(3)  # work after the checkpoint that a crash loses

    reseed(12345)  # a new attempt: different init, different RNG state
    second = Trainer(seed=7)
    resumer = CheckpointManager(any_store, run="r", attempt=2)
    step = resumer.restore(
        model=second.model, optimizer=second.optimizer, scheduler=second.scheduler
    )
    assert step == 6
    assert resumer.extra == {"losses": losses, "note": ("a", 1)}
    resumed = resumer.extra["losses"] + second.run(12 - step)
    assert resumed == expected  # exact float equality, not approx
    for a, b in zip(first.optimizer.param_groups, second.optimizer.param_groups, strict=True):
        assert a["betas"] == b["betas"]


def test_restore_with_nothing_to_restore(any_store: Store) -> None:
    model = torch.nn.Linear(2, 2)
    before = [p.clone() for p in model.parameters()]
    assert CheckpointManager(any_store).restore(model=model) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
