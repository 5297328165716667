"""Opening a run's store from the operator: allowed roots, s3 credentials from a Secret.

Every store the operator touches is opened here, so the allowed-roots check (confined paths) and
the credential handling cannot be skipped by one code path. Storage calls block (fsspec), so
callers run them with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from typing import Any

from ckpt_operator.kube import client as kube
from ckpt_operator.storage.store import Store, StoreError

SECRET_TTL_S = 30.0
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")

_secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}


class CredentialsError(StoreError):
    """The Secret named by ``spec.store.secretRef`` is missing or incomplete."""


def storage_options(secret: Mapping[str, str]) -> dict[str, Any]:
    """s3fs options from the decoded Secret data (keys as in the AWS environment variables)."""
    missing = [k for k in SECRET_KEYS[:2] if not secret.get(k)]
    if missing:
        raise CredentialsError(f"secret lacks {', '.join(missing)}")
    client_kwargs: dict[str, Any] = {}
    if secret.get("AWS_ENDPOINT_URL"):
        client_kwargs["endpoint_url"] = secret["AWS_ENDPOINT_URL"]
    if secret.get("AWS_REGION"):
        client_kwargs["region_name"] = secret["AWS_REGION"]
    return {
        "key": secret["AWS_ACCESS_KEY_ID"],
        "secret": secret["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": client_kwargs,
    }


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


async def read_secret(namespace: str, name: str) -> dict[str, str]:
    """The Secret's decoded data, cached briefly (every decision would otherwise GET it)."""
    key = (namespace, name)
    cached = _secrets.get(key)
    if cached is not None and time.monotonic() - cached[0] < SECRET_TTL_S:
        return cached[1]
    raw = await kube.read_secret(namespace, name)
    if raw is None:
        raise CredentialsError(f"secret {namespace}/{name} not found")
    data = decode_secret_data(raw)
    _secrets[key] = (time.monotonic(), data)
    return data


async def open_store(
    namespace: str, uri: str, secret_name: str | None, allowed_roots: tuple[str, ...]
) -> Store:
    """The run's store, refused unless its root lies inside one of ``allowed_roots``."""
    options = None
    if secret_name:
        options = storage_options(await read_secret(namespace, secret_name))
    return await asyncio.to_thread(
        Store.from_uri, uri, allowed_roots=allowed_roots, storage_options=options
    )
