"""Every Kubernetes API call the operator makes outside Kopf's own patching, in one place.

One shared ``kubernetes_asyncio`` client (in-cluster config, else the kubeconfig), a handful of
calls on our resources, and the two error helpers handlers need. Kopf applies a handler's
``patch`` only when the handler returns; code that must write while it waits (the run
controller, a finalizer showing ``blockedBy``) writes through here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import kopf

from ckpt_operator.api import names

T = TypeVar("T")

REQUEST_TIMEOUT_S = 60.0
"""No call waits longer (as Kopf's own requests): a connection that went silent must fail and
be retried, never hang a run's controller or a finalizer for good."""

_api: Any = None
_api_lock: asyncio.Lock | None = None


async def api_client() -> Any:
    """The shared ``kubernetes_asyncio`` ApiClient, created on first use."""
    global _api, _api_lock
    if _api is not None:
        return _api
    if _api_lock is None:
        _api_lock = asyncio.Lock()
    async with _api_lock:
        if _api is None:
            from kubernetes_asyncio import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
            _api = client.ApiClient()
    return _api


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error, None for anything else."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def api_message(exc: BaseException) -> str:
    """The API server's own message from an error body, for conditions and events."""
    raw = getattr(exc, "body", None) or getattr(exc, "reason", None) or "{}"
    try:
        message = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc)[:1024]


async def _custom() -> Any:
    from kubernetes_asyncio import client

    return client.CustomObjectsApi(await api_client())


class ApiUnavailable(kopf.TemporaryError):
    """The API server could not answer now (restarting, overloaded, a connection cut): retried
    soon, by Kopf for a handler (as a temporary error: a line in the log, no traceback) or by
    the caller's own loop; never a verdict about the object."""


async def bounded(call: Awaitable[T]) -> T:
    """``call``, cancelled after :data:`REQUEST_TIMEOUT_S`; :class:`ApiUnavailable` when the
    API server cannot answer now."""
    try:
        return await asyncio.wait_for(call, REQUEST_TIMEOUT_S)
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise ApiUnavailable(f"the API server did not answer: {exc!r}", delay=2) from exc
    except Exception as exc:
        status = status_of(exc)
        if status is not None and (status == 429 or status >= 500):
            message = f"the API server answered {status}: {api_message(exc)}"
            raise ApiUnavailable(message, delay=2) from exc
        raise


async def _unless(status: int, call: Awaitable[T]) -> T | None:
    """The call's result, or None when the API answers ``status`` (404: gone, 409: exists)."""
    try:
        return await bounded(call)
    except Exception as exc:
        if status_of(exc) == status:
            return None
        raise


async def get(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our objects as stored now, or None when it is gone."""
    api = await _custom()
    call = api.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, plural, name)
    body: dict[str, Any] | None = await _unless(404, call)
    return body


async def patch_status(
    plural: str,
    namespace: str,
    name: str,
    status: dict[str, Any],
    *,
    resource_version: str | None = None,
) -> dict[str, Any] | None:
    """Merge ``status`` into the object's status; None when it is gone.

    With ``resource_version`` the write is refused (409) unless the object is still at that
    version, so a decision made on a stale view never clobbers a newer one.
    """
    patch: dict[str, Any] = {"status": status}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": resource_version}
    api = await _custom()
    call = api.patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, namespace, plural, name, patch, _content_type=names.MERGE_PATCH
    )
    body: dict[str, Any] | None = await _unless(404, call)
    return body


async def patch_metadata(
    plural: str, namespace: str, name: str, metadata: dict[str, Any]
) -> dict[str, Any] | None:
    """Merge ``metadata`` (annotations, owner references) into the object; None when gone."""
    api = await _custom()
    call = api.patch_namespaced_custom_object(
        names.GROUP,
        names.VERSION,
        namespace,
        plural,
        name,
        {"metadata": metadata},
        _content_type=names.MERGE_PATCH,
    )
    body: dict[str, Any] | None = await _unless(404, call)
    return body


async def delete_checkpoint(namespace: str, name: str) -> bool:
    """Delete the object (the finalizer then deletes storage); False when already gone."""
    api = await _custom()
    call = api.delete_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.CHECKPOINTS, name
    )
    return await _unless(404, call) is not None


async def create_checkpoint(namespace: str, body: dict[str, Any]) -> bool:
    """Create a Checkpoint object; False when one of that name exists already."""
    api = await _custom()
    call = api.create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.CHECKPOINTS, body
    )
    return await _unless(409, call) is not None


async def create_pod(namespace: str, body: dict[str, Any]) -> None:
    """Create a pod; API errors raise ``ApiException`` (409 when it exists)."""
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(await api_client())
    # Unparsed: turning the echoed pod into a V1Pod model costs more than the request.
    response = await bounded(core.create_namespaced_pod(namespace, body, _preload_content=False))
    data = await bounded(response.read())
    if not 200 <= response.status <= 299:
        raise client.exceptions.ApiException(status=response.status, reason=data[:2048])


async def delete_pod(namespace: str, name: str) -> bool:
    """Delete a pod (its containers get their grace period); False when already gone."""
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(await api_client())
    return await _unless(404, core.delete_namespaced_pod(name, namespace)) is not None


async def create_service(namespace: str, body: dict[str, Any]) -> bool:
    """Create a Service; False when one of that name exists already."""
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(await api_client())
    return await _unless(409, core.create_namespaced_service(namespace, body)) is not None


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data (base64 values, as stored), or None when it does not exist."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(await api_client())
    secret = await _unless(404, core.read_namespaced_secret(name, namespace))
    return None if secret is None else dict(secret.data or {})


async def apply_webhook_configuration(body: dict[str, Any]) -> None:
    """Create the MutatingWebhookConfiguration, or replace the one of that name."""
    from kubernetes_asyncio import client

    api: Any = client.AdmissionregistrationV1Api(await api_client())
    name = body["metadata"]["name"]
    if await _unless(409, api.create_mutating_webhook_configuration(body)) is not None:
        return
    current = await bounded(api.read_mutating_webhook_configuration(name))
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
    }
    await bounded(api.replace_mutating_webhook_configuration(name, body))
