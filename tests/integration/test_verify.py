"""Verification on request (``verify.ckpt.dev/requested-at``) against the real API server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.api import names
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_requested_verification_is_recorded_before_the_request_goes(
    k8s: Any, namespace: str, tmp_path: Path, start_operator: Callable[..., OperatorProcess]
) -> None:
    root = tmp_path / "allowed"
    operator = start_operator(namespace, allowed_roots=(f"file://{root}",))
    c = Cluster(k8s, namespace)
    run = c.create_run(run_body("rv", f"file://{root}/rv"))
    path = root / "rv" / write_checkpoint(root / "rv", "rv", 10)
    name = c.register(run, 10)
    c.wait_checkpoint(name, "Ready")

    def request_and_wait(request: bool = True) -> dict[str, Any]:
        if request:
            c.annotate(name, {names.ANNOTATION_VERIFY_REQUESTED: "now"})

        def answered() -> dict[str, Any] | None:
            body = c.checkpoint(name) or {}
            pending = names.ANNOTATION_VERIFY_REQUESTED in body["metadata"].get("annotations", {})
            return None if pending else body

        return wait_for(answered, 20, "the request to be answered")

    model = path / "model.bin"
    model.write_bytes(b"X" + model.read_bytes()[1:])  # same size: only checksums tell
    status = request_and_wait()["status"]
    assert status["phase"] == "Invalid"
    assert "checksum mismatch" in status["message"]
    assert status["verifiedAt"]

    model.write_bytes(b"w" + model.read_bytes()[1:])  # repaired
    assert request_and_wait()["status"]["phase"] == "Ready"

    # A request made while the operator is down is served when it starts.
    operator.stop()
    model.write_bytes(b"X" + model.read_bytes()[1:])
    c.annotate(name, {names.ANNOTATION_VERIFY_REQUESTED: "while down"})
    start_operator(namespace, allowed_roots=(f"file://{root}",))
    assert request_and_wait(request=False)["status"]["phase"] == "Invalid"
