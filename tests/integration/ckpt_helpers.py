"""Shared helpers for the checkpoint-lifecycle integration tests (and benchmarks/gc.py).

Checkpoints are written with the real manifest format (``ckpt_operator.storage.manifest``) but
without torch, so these tests need only the operator's own dependencies.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.storage.manifest import FileEntry, Manifest, new_hasher
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.waiting import wait_for

GROUP, VERSION = names.GROUP, names.VERSION


def write_checkpoint(
    store: Store,
    run: str,
    step: int,
    attempt: int = 0,
    fmt: names.Format = "dir",
    *,
    kind: str = "full",
    payload: bytes = b"weights" * 100,
    metrics: dict[str, float] | None = None,
) -> str:
    """Write a committed checkpoint (manifest with sizes and checksums); returns its path."""
    name = layout.CheckpointName(step, attempt, fmt)
    files = {"model.bin": payload, "meta.json": b'{"step": %d}' % step}
    entries = []
    for fname, data in files.items():
        hasher = new_hasher()
        hasher.update(data)
        entries.append(FileEntry(path=fname, size=len(data), checksum=hasher.hexdigest()))
    manifest = Manifest.build(
        run=run,
        step=step,
        attempt=attempt,
        kind=kind,  # type: ignore[arg-type]
        format=fmt,
        files=entries,
        metrics=metrics,
    )
    store.ensure_root()
    if fmt == "dir":
        for fname, data in files.items():
            with store.open(f"{name.path}/{fname}", "wb") as f:
                f.write(data)
        with store.open(f"{name.path}/{layout.MANIFEST_NAME}", "wb") as f:
            f.write(manifest.to_bytes())
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for fname, data in [*files.items(), (layout.MANIFEST_NAME, manifest.to_bytes())]:
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        with store.open(name.path, "wb") as f:
            f.write(buffer.getvalue())
    return name.path


def run_body(
    name: str,
    store_uri: str,
    *,
    retention: dict[str, Any] | None = None,
    consumers: dict[str, Any] | None = None,
    secret: str | None = None,
    verify: str = "full",
    **extra: Any,
) -> dict[str, Any]:
    store: dict[str, Any] = {"uri": store_uri}
    if secret:
        store["secretRef"] = {"name": secret}
    spec: dict[str, Any] = {
        "store": store,
        "template": {"spec": {"containers": [{"name": "trainer", "image": "busybox"}]}},
        "verify": verify,
        **extra,
    }
    if retention:
        spec["retention"] = retention
    if consumers:
        spec["consumers"] = consumers
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": spec,
    }


class Cluster:
    """The test's view of the API: runs, checkpoints, consumer pods."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        created: Any = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, "trainingruns", body
        )
        return dict(created)

    def register(
        self,
        run: dict[str, Any],
        step: int,
        attempt: int = 0,
        fmt: names.Format = "dir",
        kind: str = "full",
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Create the Checkpoint object the SDK would create (owned by the run)."""
        ck = layout.CheckpointName(step, attempt, fmt)
        name = ck.object_name(run["metadata"]["name"])
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Checkpoint",
            "metadata": {
                "name": name,
                "labels": {
                    names.LABEL_RUN: run["metadata"]["name"],
                    names.LABEL_STEP: str(step),
                    names.LABEL_ATTEMPT: str(attempt),
                },
                "ownerReferences": [
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "TrainingRun",
                        "name": run["metadata"]["name"],
                        "uid": run["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "run": run["metadata"]["name"],
                "step": step,
                "attempt": attempt,
                "path": ck.path,
                "format": fmt,
                "kind": kind,
            },
        }
        if metrics:
            body["spec"]["metrics"] = metrics
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, "checkpoints", body
            )
        except ApiException as exc:
            if exc.status != 409:  # the store scan may have registered it first
                raise
        return name

    def ckpt(self, name: str) -> dict[str, Any] | None:
        try:
            body: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, "checkpoints", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    def run(self, name: str) -> dict[str, Any] | None:
        try:
            body: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, "trainingruns", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    def phase(self, name: str) -> str | None:
        body = self.ckpt(name)
        return ((body or {}).get("status") or {}).get("phase")

    def wait_phase(self, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
        wait_for(lambda: self.phase(name) == phase, timeout, f"{name} to become {phase}")
        body = self.ckpt(name)
        assert body is not None
        return body

    def names(self) -> set[str]:
        found: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, "checkpoints"
        )
        return {c["metadata"]["name"] for c in found["items"]}

    def delete(self, name: str, plural: str = "checkpoints") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, "checkpoints", name, {"metadata": {"annotations": annotations}}
        )

    def consumer(self, name: str, run: str, loaded: int | None = None) -> None:
        """A consumer pod (no nodeName: it stays Pending and nothing runs it)."""
        annotations = {names.ANNOTATION_LOADED_STEP: str(loaded)} if loaded is not None else {}
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name, labels={names.LABEL_CONSUMER_OF: run}, annotations=annotations
            ),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        self.core.create_namespaced_pod(self.ns, pod)

    def report(self, pod: str, step: int) -> None:
        patch = {"metadata": {"annotations": {names.ANNOTATION_LOADED_STEP: str(step)}}}
        self.core.patch_namespaced_pod(pod, self.ns, patch)

    def events(self, reason: str) -> list[Any]:
        found = self.core.list_namespaced_event(self.ns)
        return [e for e in found.items if e.reason == reason]


def exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()
