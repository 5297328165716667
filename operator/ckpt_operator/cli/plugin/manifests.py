"""Reading a checkpoint's manifest for ``kubectl ckpt describe``, where this machine can.

``file://`` stores are read when the path exists here; ``s3://`` stores with the run's Secret
only when the user's own kubeconfig may read it (the plugin never borrows the operator's
rights). Otherwise describe shows what the Checkpoint's status says, and says so.
"""

from __future__ import annotations

import os
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.cli.plugin.cluster import Cluster
from ckpt_operator.cli.plugin.report import Body, Snapshot
from ckpt_operator.storage import manifest
from ckpt_operator.storage.open import decode_secret_data, storage_options
from ckpt_operator.storage.store import Store, StoreError

STATUS_ONLY = "status only"


def _store(cluster: Cluster, root: str, secret: str | None) -> Store:
    if root.startswith("file://"):
        if not os.path.isdir(root.removeprefix("file://")):
            raise StoreError(f"{root} is not on this machine")
        return Store.from_uri(root)
    options = None
    if secret:
        data = cluster.secret(secret)
        if data is None:
            raise StoreError(f"Secret {secret} is missing, or your kubeconfig may not read it")
        options = storage_options(decode_secret_data(data))
    return Store.from_uri(root, storage_options=options)


def read(cluster: Cluster, snapshot: Snapshot, body: Body) -> tuple[dict[str, Any] | None, str]:
    """``(the manifest as JSON-ready data, where it came from)``; None when unreadable."""
    annotations = body["metadata"].get("annotations") or {}
    run = snapshot.run_view(body["spec"]["run"])
    root = (run.store_uri if run else "") or annotations.get(names.ANNOTATION_STORE, "")
    secret = (run.secret_name if run else None) or annotations.get(names.ANNOTATION_STORE_SECRET)
    if not root:
        return None, f"{STATUS_ONLY} (no store is known: the run is gone)"
    path = body["spec"]["path"]
    try:
        store = _store(cluster, root, secret)
        if path.endswith(".tar"):
            found, _ = manifest.scan(store, path, checksums=False)
        else:
            found = manifest.read_manifest(store, path)
    except (StoreError, manifest.ManifestError, manifest.VerifyError, OSError) as exc:
        return None, f"{STATUS_ONLY} ({exc})"
    return found.model_dump(mode="json"), f"store {store.uri(path)}"
