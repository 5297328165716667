"""A pod of an attached run that started without the webhook (operator down, failurePolicy
Ignore) has only the CKPT_STORE its template sets: the SDK then scans the store itself."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.api import names
from ckpt_operator.sdk import CheckpointManager


def test_without_the_webhook_restore_falls_back_to_the_newest_committed_checkpoint(
    tmp_path: Path,
) -> None:
    store = f"file://{tmp_path}/run"
    writer = CheckpointManager(store, run="train", attempt=1)
    for step in (100, 200):
        writer.save(step, model=torch.nn.Linear(4, 4))
    (tmp_path / "run" / ".tmp.step-0000000300.attempt-1").mkdir()  # a save that never committed

    pod = CheckpointManager.from_env({names.ENV_STORE: store})  # the template's env alone
    assert pod.resume_candidates is None
    assert pod.restore(model=torch.nn.Linear(4, 4)) == 200


def test_with_the_webhook_an_empty_candidate_list_is_not_widened_to_a_scan(
    tmp_path: Path,
) -> None:
    """The webhook sets ``[]`` when the operator verified nothing: the pod starts from scratch."""
    store = f"file://{tmp_path}/run"
    CheckpointManager(store, run="train", attempt=1).save(100, model=torch.nn.Linear(4, 4))
    env = {
        names.ENV_STORE: store,
        names.ENV_RUN: "train",
        names.ENV_RESUME_FROM: "",
        names.ENV_RESUME_CANDIDATES: "[]",
    }
    pod = CheckpointManager.from_env(env, registry=None)
    assert pod.resume_candidates == []
    assert pod.restore(model=torch.nn.Linear(4, 4)) is None
