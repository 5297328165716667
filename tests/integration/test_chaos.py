"""Chaos (in `make test`; `make chaos` alone): the operator SIGKILLed at random instants (>= 30
times) while single-node runs and a gang fail and restart, checkpoints are saved, reported,
expired and deleted.

The invariant checker (``ckpt_operator.testing.invariants``) judges all six invariants of
docs/design.md from the recorded history; the seed is printed (and named in any failure) for
replay with ``CKPT_CHAOS_SEED``. ``benchmarks/chaos.py --kills 500`` is the long version.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.testing.chaos import Chaos, ChaosConfig
from ckpt_operator.testing.cluster import Cluster
from ckpt_operator.testing.observer import Observer
from ckpt_operator.testing.operator_process import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(600)]


def test_sigkill_at_random_instants_breaks_no_invariant(
    k8s: Any, kubeconfig: Path, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("CKPT_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed}")
    monkeypatch.setenv("CKPT_MAINTENANCE_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SCAN_INTERVAL_S", "1")
    monkeypatch.setenv("CKPT_SWEEP_GRACE_S", "30")
    root = tmp_path / "allowed"
    operator = OperatorProcess(
        kubeconfig,
        tmp_path / "operator.log",
        namespaces=[namespace],
        allowed_roots=[f"file://{root}"],
    )
    config = ChaosConfig(seed=seed, kills=int(os.environ.get("CKPT_CHAOS_KILLS", "30")))
    try:
        with Observer(kubeconfig, namespace) as observer:
            result = Chaos(Cluster(k8s, namespace), operator, observer, root, config).run()
    finally:
        operator.stop()
    print(result.report())
    assert not result.violations, result.report()
    assert result.convergence_s is not None, result.report()
    assert result.kills >= config.kills
    assert "Traceback" not in operator.log_text(), operator.log_text()[-4000:]
