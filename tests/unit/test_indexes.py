"""The index functions share one view of a Checkpoint event, and only of the same version."""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator.handlers.indexes import checkpoint_view
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.storage.layout import CheckpointName


def _body(uid: str, version: str, step: int = 10) -> kopf.Body:
    raw: dict[str, Any] = checkpoint_body("r", CheckpointName(step, 0, "dir"))
    raw["metadata"].update(namespace="ns", uid=uid, resourceVersion=version)
    return kopf.Body(raw)


def test_one_view_per_object_version() -> None:
    first = checkpoint_view(_body("u1", "5"))
    assert checkpoint_view(_body("u1", "5")) is first
    changed = checkpoint_view(_body("u1", "6", step=20))
    assert changed is not first and changed.step == 20
    assert checkpoint_view(_body("u2", "6")) is not changed


def test_a_body_without_uid_or_version_is_never_shared() -> None:
    unnamed = _body("", "")
    assert checkpoint_view(unnamed) is not checkpoint_view(unnamed)
    assert checkpoint_view(unnamed) == checkpoint_view(unnamed)
