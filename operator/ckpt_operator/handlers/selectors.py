"""Decorator arguments selecting our resources (and attempt pods) in Kopf handlers."""

from __future__ import annotations

import kopf

from ckpt_operator.api import names

TRAINING_RUNS = (names.GROUP, names.VERSION, names.TRAINING_RUNS)
CHECKPOINTS = (names.GROUP, names.VERSION, names.CHECKPOINTS)
ATTEMPT_POD_LABELS = {names.LABEL_RUN: kopf.PRESENT, names.LABEL_ATTEMPT: kopf.PRESENT}
