"""The reads and writes ``kubectl ckpt`` makes, on the synchronous ``kubernetes`` client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.cli.plugin.report import Body, Snapshot


class Cluster:
    """One namespace of the cluster the user's kubeconfig (or the pod's account) points at."""

    def __init__(self, namespace: str | None, kubeconfig: str | None, context: str | None):
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            default_ns = (active or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, TypeError, FileNotFoundError):
            config.load_incluster_config()
            default_ns = "default"
        self.namespace = namespace or default_ns
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    def _list(self, plural: str, selector: str | None = None) -> list[Body]:
        found: Any = self.custom.list_namespaced_custom_object(
            names.GROUP, names.VERSION, self.namespace, plural, label_selector=selector or ""
        )
        items: list[Body] = found.get("items", [])
        return items

    def checkpoints(self, selector: str | None = None) -> list[Body]:
        return self._list(names.CHECKPOINTS, selector)

    def runs(self) -> list[Body]:
        return self._list(names.TRAINING_RUNS)

    def pods(self) -> list[Body]:
        from kubernetes import client

        pods = self.core.list_namespaced_pod(self.namespace)
        sanitized: list[Body] = client.ApiClient().sanitize_for_serialization(pods)["items"]
        return sanitized

    def snapshot(self) -> Snapshot:
        """Checkpoints, runs and pods as they are now: what every report decides on."""
        return Snapshot(self.checkpoints(), self.runs(), self.pods(), datetime.now(UTC))

    def get(self, name: str) -> Body | None:
        from kubernetes.client.exceptions import ApiException

        try:
            body: Any = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        patch = {"metadata": {"annotations": annotations}}
        self.custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name, patch
        )

    def delete(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def secret(self, name: str) -> dict[str, str] | None:
        """A Secret's encoded data, or None when it is missing or the user may not read it."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        return {key: str(value) for key, value in (secret.data or {}).items()}
