"""The few direct API calls the lifecycle handlers make outside Kopf's own patching.

Kopf applies a handler's ``patch`` only when the handler returns; a finalizer that waits in
process for consumers must show ``blockedBy`` while it waits, so it patches status itself.
"""

from __future__ import annotations

from typing import Any

from ckpt_operator.api import names
from ckpt_operator.storage.open import api_client

_MERGE = "application/merge-patch+json"


async def _custom() -> Any:
    from kubernetes_asyncio import client

    return client.CustomObjectsApi(await api_client())


def _missing(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


async def get_checkpoint(namespace: str, name: str) -> dict[str, Any] | None:
    """The Checkpoint as stored now, or None when it is gone."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        body: dict[str, Any] = await (await _custom()).get_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, "checkpoints", name
        )
    except ApiException as exc:
        if _missing(exc):
            return None
        raise
    return body


async def patch_checkpoint_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await (await _custom()).patch_namespaced_custom_object_status(
            names.GROUP,
            names.VERSION,
            namespace,
            "checkpoints",
            name,
            {"status": status},
            _content_type=_MERGE,
        )
    except ApiException as exc:
        if not _missing(exc):
            raise


async def delete_checkpoint(namespace: str, name: str) -> bool:
    """Delete the object (the finalizer then deletes storage); False when already gone."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await (await _custom()).delete_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, "checkpoints", name
        )
    except ApiException as exc:
        if _missing(exc):
            return False
        raise
    return True


async def create_checkpoint(namespace: str, body: dict[str, Any]) -> bool:
    """Create a Checkpoint object; False when one of that name exists already."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await (await _custom()).create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, "checkpoints", body
        )
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True
