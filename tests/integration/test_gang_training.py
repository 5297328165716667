"""A 3-node gang trains for real (examples/train_distributed.py on gloo, run by the LocalRunner):
one worker dies after a checkpoint, the operator restarts the whole gang, every rank resumes from
the newest checkpoint, and the losses equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from ckpt_operator.api import names
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.controlplane import free_port
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.runner import LocalRunner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/train_distributed.py"
NODES = 3
TRAINING = {"TOTAL_STEPS": "30", "SAVE_EVERY": "10", "OMP_NUM_THREADS": "1"}
LINE = re.compile(r"^rank=(\d+) step=(\d+) loss=(\S+)$", re.MULTILINE)
Losses = dict[tuple[int, int], str]


def _losses(text: str) -> Losses:
    return {(int(r), int(s)): loss for r, s, loss in LINE.findall(text)}


def _reference(store: Path) -> Losses:
    """The same training on 3 plain local processes, never interrupted."""
    env = {
        **os.environ,
        **TRAINING,
        "CKPT_STORE": f"file://{store}",
        "WORLD_SIZE": str(NODES),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    env.pop("KUBECONFIG", None)
    procs = [
        subprocess.Popen(
            [sys.executable, EXAMPLE],
            cwd=REPO,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(NODES)
    ]
    outputs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * NODES, "\n".join(outputs)[-4000:]
    return _losses("\n".join(outputs))


@pytest.fixture
def runner(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[LocalRunner]:
    with LocalRunner(kubeconfig, namespace, REPO, tmp_path / "pods") as started:
        yield started


def test_a_gang_worker_dies_and_the_gang_resumes_bit_identically(
    k8s: Any,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
    runner: LocalRunner,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    operator = start_operator(namespace, allowed_roots=(f"file://{tmp_path}/",))
    kube = Cluster(k8s, namespace)
    env = {**TRAINING, "FAIL_AT_STEP": "25", "FAIL_RANK": "2", "GLOO_SOCKET_IFNAME": "lo"}
    trainer = {
        "name": "trainer",
        "image": "local",
        # torchrun reads the gang's PET_* variables: one process per node, RANK = node rank
        "command": ["python", "-m", "torch.distributed.run", "--nproc-per-node=1", EXAMPLE],
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    kube.create_run(run_body("g", f"file://{store}", numNodes=NODES, containers=[trainer]))
    reference = _reference(tmp_path / "reference")  # meanwhile, on the side

    status = kube.wait_run_phase("g", "Succeeded", timeout=180)
    logs = {p.name: p.read_text() for p in runner.logdir.glob("*.log")}
    context = f"{status}\n{operator.log_text()[-3000:]}\n{logs}"
    attempts = status["attempts"]
    assert len(attempts) == 2, context
    assert attempts[1]["resumedFrom"]["step"] == 20, context

    for attempt in (0, 1):
        for rank in range(NODES):
            pod = names.attempt_pod_name("g", attempt, rank, NODES)
            found = _losses(logs[f"{pod}.log"])
            steps = sorted(s for _, s in found)
            if attempt == 0:  # rank 2 leaves before step 25; the others may be killed sooner
                assert steps == list(range(1, len(steps) + 1)), (pod, context)
                assert 20 <= len(steps) <= 24, (pod, context)
            else:
                assert steps == list(range(21, 31)), (pod, context)
            assert {r for r, _ in found} == {rank}, (pod, context)
            assert all(found[key] == reference[key] for key in found), (pod, context)
    resumed = [logs[f"{names.attempt_pod_name('g', 1, r, NODES)}.log"] for r in range(NODES)]
    assert all("starting at step 20 (attempt 1)" in text for text in resumed), context
    assert "Traceback" not in operator.log_text(), operator.log_text()[-4000:]
