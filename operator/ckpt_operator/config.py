"""Operator configuration, given on the command line (or the Helm chart's values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class WebhookConfig:
    """The admission webhook that gives pods of attached runs their resume point (docs/attach.md).

    With ``certfile``/``keyfile`` (the chart's Secret) Kopf's server serves that certificate and
    reloads it when the files change; without, it makes a self-signed one (local use). With
    ``configuration`` the operator itself creates and updates that MutatingWebhookConfiguration
    pointing at this server (local use; the chart ships its own).
    """

    port: int
    addr: str = "0.0.0.0"  # noqa: S104 - a pod serves the API server on its pod IP
    host: str | None = None
    """How the API server reaches the server, for a configuration the operator manages."""
    certfile: str | None = None
    keyfile: str | None = None
    configuration: str | None = None
    failure_policy: Literal["Ignore", "Fail"] = "Ignore"
    timeout_s: int = 5


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
    webhook: WebhookConfig | None = None
    """Serve the admission webhook for attached runs; None: off."""
