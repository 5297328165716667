"""Kopf's admission webhook server, with what the attach webhook needs on top of it.

:class:`WebhookServer` is Kopf's own server (TLS, certificate reloads, routing to the
``@kopf.on.mutate`` handler) with three additions, each small:

* **Readiness.** Kopf serves admission as soon as it knows the cluster's resources, before its
  indexes are listed; a resume point chosen from a half-listed checkpoint index would be wrong.
  Requests wait (briefly) until the indexes are complete, else they get HTTP 503.
* **Unavailable is not refused.** A handler's error becomes an admission *refusal*; where the
  webhook merely cannot answer (not ready, API unreachable) the handler raises
  ``AdmissionError(code=503)`` and this server answers HTTP 503 instead, so the API server's
  ``failurePolicy`` decides (Ignore: the pod starts without the env; Fail: it is refused).
* **Self-signed certificates** for local use are made with ``cryptography`` (already a
  dependency), not Kopf's optional ``certbuilder``/``oscrypto``, which no longer load with
  current OpenSSL 3 releases.

With ``WebhookConfig.configuration`` set, the MutatingWebhookConfiguration is created and kept
pointing at this server (local use; Helm installs ship their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

import aiohttp.web
import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ckpt_operator import metrics
from ckpt_operator.api import names
from ckpt_operator.config import WebhookConfig
from ckpt_operator.kube import client as kube
from ckpt_operator.kube import webhook

log = logging.getLogger(__name__)

READY_WAIT_S = 2.0
"""How long a request waits for the indexes after the operator started; well within the
webhook's timeout, so a slow start yields a clear 503 instead of the API server's timeout."""
UNAVAILABLE = 503


class WebhookServer(kopf.WebhookServer):
    """Kopf's server, gated on ``ready``, mapping unavailability to HTTP 503."""

    def __init__(self, config: WebhookConfig, ready: asyncio.Event) -> None:
        super().__init__(
            addr=config.addr,
            port=config.port,
            host=config.host,
            certfile=config.certfile,
            pkeyfile=config.keyfile,
        )
        self.config = config
        self.ready = ready

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def serve(
            request: Any,
            *,
            webhook: str | None = None,
            headers: kopf.Headers | None = None,
            sslpeer: kopf.SSLPeer | None = None,
        ) -> Any:
            if not self.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), READY_WAIT_S)
            if not self.ready.is_set():
                metrics.WEBHOOK_ERRORS.labels("not_ready").inc()
                raise aiohttp.web.HTTPServiceUnavailable(reason="indexes not listed yet")
            response = await fn(request, webhook=webhook, headers=headers, sslpeer=sslpeer)
            status = response.get("response", {}).get("status") or {}
            if status.get("code") == UNAVAILABLE:
                raise aiohttp.web.HTTPServiceUnavailable(
                    reason=str(status.get("message", ""))[:200]
                )
            return response

        async for client_config in super().__call__(serve):
            if self.config.configuration:
                await self._register(client_config)
            yield client_config

    async def _register(self, client_config: kopf.WebhookClientConfig) -> None:
        """Create or update the configuration; retried, the server is useless without it."""
        url = f"{str(client_config.get('url', '')).rstrip('/')}/{names.WEBHOOK_PATH}"
        entry = webhook.mutating_webhook(
            {**client_config, "url": url},
            failure_policy=self.config.failure_policy,
            timeout_s=self.config.timeout_s,
        )
        assert self.config.configuration is not None
        body = webhook.configuration(self.config.configuration, entry)
        for delay in (0.5, 1, 2, 4, 8, 16):
            try:
                await kube.apply_webhook_configuration(body)
                log.info("webhook configuration %s points at %s", self.config.configuration, url)
                return
            except Exception as exc:
                log.warning("cannot apply webhook configuration (retry in %s s): %s", delay, exc)
                await asyncio.sleep(delay)
        await kube.apply_webhook_configuration(body)

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        """A self-signed certificate for ``hostnames`` (IPs and DNS names), valid one year."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for hostname in dict.fromkeys(h for h in hostnames if h):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(hostname)))
            except ValueError:
                sans.append(x509.DNSName(hostname))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckpt-operator-webhook")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key
