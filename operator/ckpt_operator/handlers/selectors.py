"""Decorator arguments selecting our resources (and attempt pods) in Kopf handlers."""

from __future__ import annotations

from typing import Any

import kopf

from ckpt_operator.api import names

TRAINING_RUNS = (names.GROUP, names.VERSION, names.TRAINING_RUNS)
CHECKPOINTS = (names.GROUP, names.VERSION, names.CHECKPOINTS)
ATTEMPT_POD_LABELS = {names.LABEL_RUN: kopf.PRESENT, names.LABEL_ATTEMPT: kopf.PRESENT}


def attached(spec: kopf.Spec, **_: Any) -> bool:
    """A run with ``spec.workload``: another controller creates its pods (handlers/attached.py)."""
    return spec.get("workload") is not None


def managed(spec: kopf.Spec, **_: Any) -> bool:
    """A run with ``spec.template``: the operator creates its pods (handlers/runs.py)."""
    return not attached(spec)
