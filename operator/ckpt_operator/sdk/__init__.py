"""Trainer and consumer SDK (needs the ``torch`` extra: ``pip install ckpt-operator[torch]``).

The public classes load lazily, so the torch-free parts (``safetar``, ``registry``,
``writer``) import without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckpt_operator.sdk.consumer import Consumer, WeightsRef
    from ckpt_operator.sdk.manager import CandidatesUnreadableError, CheckpointManager
    from ckpt_operator.sdk.preemption import PreemptionNotice, save_on_sigterm

__all__ = [
    "CandidatesUnreadableError",
    "CheckpointManager",
    "Consumer",
    "PreemptionNotice",
    "WeightsRef",
    "save_on_sigterm",
]
_HOMES = {
    "CandidatesUnreadableError": "manager",
    "CheckpointManager": "manager",
    "Consumer": "consumer",
    "PreemptionNotice": "preemption",
    "WeightsRef": "consumer",
    "save_on_sigterm": "preemption",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
