"""Operator start: production settings, liveness, metrics, the shared runtime; and ``run``."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import kopf
import prometheus_client

from ckpt_operator.api import names
from ckpt_operator.config import OperatorConfig
from ckpt_operator.handlers import admission
from ckpt_operator.handlers.runtime import Runtime
from ckpt_operator.handlers.webhook_server import WebhookServer
from ckpt_operator.kube import kopf_gate

log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Production settings: our own finalizer and annotation prefix, bounded watches."""
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=names.KOPF_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.KOPF_PREFIX, key="last-handled-configuration"
    )
    # Silent watches (a dropped connection through a proxy) must reconnect, not hang forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 600
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Kopf's own log lines become Events only when they matter; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "ckpt-operator"
    memo.runtime = Runtime()  # before any resource handler: each copies the memo
    config: OperatorConfig = memo.config
    if config.webhook is not None:
        settings.admission.server = WebhookServer(config.webhook, memo.runtime.indexed)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
        log.info("metrics on :%d/metrics", config.metrics_port)


@kopf.on.probe(id="ready")
async def ready_probe(**_: Any) -> bool:
    return True


def run(
    config: OperatorConfig,
    *,
    liveness_endpoint: str | None = None,
    peering: str | None = None,
    stop_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until stopped (SIGINT/SIGTERM or ``stop_flag``)."""
    kopf.configure(verbose=False)
    kopf_gate.install()  # before kopf.run builds its start-up gate
    if config.webhook is not None:
        admission.register()
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=peering is None,
        peering_name=peering,
        # Hot standby: the replica with the highest priority handles; ties are unlikely.
        priority=random.randint(0, 32767),  # noqa: S311 - not security relevant
        liveness_endpoint=liveness_endpoint,
        memo=kopf.Memo(config=config),
        stop_flag=stop_flag,
    )
