"""Every Kubernetes call the SDK makes, behind a small interface tests can fake.

All calls are best effort: training must never stop because the API server is unreachable
or the pod's service account lacks a permission. The operator scans the store and registers
what it finds, so a registration lost here loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ckpt_operator.api import names
from ckpt_operator.api.conditions import now_iso
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.storage.layout import CheckpointName

log = logging.getLogger(__name__)

TIMEOUT_S = 10


@dataclass(frozen=True)
class CheckpointRecord:
    """What the SDK knows about a checkpoint it just committed."""

    run: str
    name: CheckpointName
    metrics: Mapping[str, float] = field(default_factory=dict)
    world_size: int | None = None
    """Ranks that wrote it (distributed checkpoints only)."""
    shards: int | None = None

    @property
    def object_name(self) -> str:
        return self.name.object_name(self.run)


class Registry(Protocol):
    """What the SDK asks of the cluster; :class:`KubeRegistry` is the real one."""

    def register(self, record: CheckpointRecord) -> None: ...

    def request_verification(self, object_name: str, reason: str) -> None: ...

    def list_checkpoints(self, run: str) -> list[dict[str, Any]]: ...

    def annotate_pod(self, pod: str, annotations: Mapping[str, str]) -> bool: ...


class KubeRegistry:
    """:class:`Registry` on the synchronous ``kubernetes`` client, in one namespace."""

    def __init__(self, namespace: str, custom_api: Any, core_api: Any) -> None:
        self.namespace = namespace
        self._custom = custom_api
        self._core = core_api
        self._owner_uid: dict[str, str | None] = {}
        self._warned: set[str] = set()

    @classmethod
    def connect(cls, namespace: str) -> KubeRegistry | None:
        """In-cluster config, else the kubeconfig; None (logged once) when neither loads."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call, unused-ignore]
        except config.ConfigException:
            try:
                config.load_kube_config()  # type: ignore[no-untyped-call, unused-ignore]
            except Exception as exc:  # no kubeconfig, unreadable or incomplete: all the same
                log.info("no Kubernetes configuration (%s); checkpoints are not registered", exc)
                return None
        return cls(namespace, client.CustomObjectsApi(), client.CoreV1Api())

    def _failed(self, what: str, exc: Exception) -> None:
        status = getattr(exc, "status", None)
        if what not in self._warned:
            self._warned.add(what)
            hint = " (the service account may not)" if status in (401, 403) else ""
            log.warning(
                "%s failed%s: %s; relying on the operator's store scan (logged once)",
                what,
                hint,
                getattr(exc, "reason", None) or exc,
            )

    def _run_uid(self, run: str) -> str | None:
        if run not in self._owner_uid:
            try:
                obj = self._custom.get_namespaced_custom_object(
                    names.GROUP,
                    names.VERSION,
                    self.namespace,
                    names.TRAINING_RUNS,
                    run,
                    _request_timeout=TIMEOUT_S,
                )
                self._owner_uid[run] = obj["metadata"]["uid"]
            except Exception as exc:
                self._failed("reading the TrainingRun for the owner reference", exc)
                self._owner_uid[run] = None
        return self._owner_uid[run]

    def register(self, record: CheckpointRecord) -> None:
        body = checkpoint_body(
            record.run,
            record.name,
            metrics=record.metrics,
            owner_uid=self._run_uid(record.run),
            world_size=record.world_size,
            shards=record.shards,
        )
        try:
            self._custom.create_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                self.namespace,
                names.CHECKPOINTS,
                body,
                _request_timeout=TIMEOUT_S,
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 409:  # 409: already registered (by the scan)
                self._failed("registering Checkpoint objects", exc)

    def request_verification(self, object_name: str, reason: str) -> None:
        """Ask the operator to verify a Checkpoint again (it alone sets Invalid), with the
        annotation it watches: trainers need no write access to Checkpoint status."""
        log.info("requesting re-verification of %s: %s", object_name, reason)
        try:
            self._custom.patch_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                self.namespace,
                names.CHECKPOINTS,
                object_name,
                {"metadata": {"annotations": {names.ANNOTATION_VERIFY_REQUESTED: now_iso()}}},
                _content_type=names.MERGE_PATCH,
                _request_timeout=TIMEOUT_S,
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 404:  # 404: deleted meanwhile
                self._failed("requesting re-verification of a Checkpoint", exc)

    def list_checkpoints(self, run: str) -> list[dict[str, Any]]:
        result = self._custom.list_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            self.namespace,
            names.CHECKPOINTS,
            label_selector=f"{names.LABEL_RUN}={run}",
            _request_timeout=TIMEOUT_S,
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def annotate_pod(self, pod: str, annotations: Mapping[str, str]) -> bool:
        try:
            self._core.patch_namespaced_pod(
                pod,
                self.namespace,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type=names.MERGE_PATCH,
                _request_timeout=TIMEOUT_S,
            )
        except Exception as exc:
            log.warning("annotating pod %s/%s failed: %s", self.namespace, pod, exc)
            return False
        return True
