"""Operator configuration, given on the command line (or the Helm chart's values)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    """Settings every handler reads through ``memo.config``.

    ``allowed_roots`` are the store URI prefixes a TrainingRun may use (confined paths); empty means
    no run's store is accepted, so a misconfigured operator fails closed.
    """

    allowed_roots: tuple[str, ...] = ()
    metrics_port: int | None = 8000
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    scan_interval_s: float = 30.0
    """How often each run's store is scanned for checkpoints that have no object."""
    sweep_grace_s: float = 3600.0
    """Uncommitted leftovers younger than this are someone's save in progress: left alone."""
    sweep_dry_run: bool = False
    """Only report (log and metrics) what the orphan sweep would remove."""
