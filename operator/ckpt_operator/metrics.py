"""Prometheus metrics the operator exports on ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import Counter

RESOURCES_SEEN = Counter(
    "ckpt_operator_resources_initialized_total",
    "Resources the operator gave their initial status and conditions.",
    ["kind"],
)
