"""Which Ready statuses carry the operator's own verification record."""

from __future__ import annotations

from typing import Any

import pytest

from ckpt_operator.api import conditions
from ckpt_operator.views.checkpoint import VERIFIED, VERIFIED_REASON, operator_verified


def _operators_ready(generation: int = 1) -> dict[str, Any]:
    return {
        "phase": "Ready",
        "digest": "sha256:abc",
        "verifiedAt": "2026-01-01T00:00:00Z",
        "conditions": conditions.set_condition(
            None, VERIFIED, "True", VERIFIED_REASON, "full verification passed", generation
        ),
    }


def test_the_operators_own_ready_is_trusted() -> None:
    assert operator_verified(_operators_ready(), 1)


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Ready"},  # what an admin or a trainer would write
        {**_operators_ready(), "digest": None},
        {**_operators_ready(), "verifiedAt": None},
        {**_operators_ready(), "conditions": []},
        {**_operators_ready(), "phase": "Pending"},
    ],
    ids=["phase-only", "no-digest", "no-time", "no-condition", "not-ready"],
)
def test_a_ready_without_the_record_is_not(status: dict[str, Any]) -> None:
    assert not operator_verified(status, 1)


def test_a_record_for_another_generation_is_not() -> None:
    assert not operator_verified(_operators_ready(generation=1), 2)
