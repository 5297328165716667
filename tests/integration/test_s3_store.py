"""An ``s3://`` store, credentials from a Secret, against a real S3-compatible server on
loopback (moto's threaded server): verification, scan, consumer-gated deletion, run deletion."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.s3 import S3Server, moto_s3
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


def test_s3_store_lifecycle(
    k8s: Any,
    namespace: str,
    s3: S3Server,
    start_operator: Callable[..., OperatorProcess],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CKPT_MAINTENANCE_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SCAN_INTERVAL_S", "1")
    c = Cluster(k8s, namespace)
    secret = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_REGION": "us-east-1",
    }
    c.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-creds"),
            data={k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        ),
    )
    start_operator(namespace, allowed_roots=(f"s3://{s3.bucket}/",))
    uri = s3.uri(f"{namespace}/run")
    run = c.create_run(run_body("s3run", uri, secret="s3-creds"))
    store = Store.from_uri(uri, storage_options=s3.storage_options)
    write_checkpoint(store, "s3run", 1, fmt="dir")
    write_checkpoint(store, "s3run", 2, fmt="tar")
    write_checkpoint(store, "s3run", 3, fmt="dir")  # registered by the operator's scan
    c.consumer("infer", "s3run", loaded=1)
    one, two = c.register(run, 1, fmt="dir"), c.register(run, 2, fmt="tar")
    three = names.checkpoint_object_name("s3run", 3, 0)
    wait_for(lambda: three in c.checkpoint_names(), 15, "the scan to register step 3")
    for name in (one, two, three):
        body = c.wait_checkpoint(name, "Ready")
        assert body["status"]["sizeBytes"] > 0 and body["status"]["digest"]

    def present(step: int, fmt: names.Format) -> bool:
        return bool(store.exists(layout.CheckpointName(step, 0, fmt).path))

    c.delete(one)
    wait_for(lambda: (c.checkpoint(one) or {}).get("status", {}).get("blockedBy"), 10, "blocked")
    assert present(1, "dir")
    c.report("infer", 2)
    wait_for(lambda: c.checkpoint(one) is None, 10, "step 1 to go after the report")
    assert not present(1, "dir")

    c.report("infer", 3)
    c.delete(two)
    wait_for(lambda: c.checkpoint(two) is None, 10, "the tar checkpoint to go")
    assert not present(2, "tar")

    c.core.delete_namespaced_pod("infer", namespace)
    c.delete("s3run", "trainingruns")
    wait_for(lambda: c.run("s3run") is None, 30, "the run and its checkpoints to go")
    assert not c.checkpoint_names()
    assert store.list_entries() == []
