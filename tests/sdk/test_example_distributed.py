"""examples/train_distributed.py on 3 local gloo ranks: one rank fails, the next attempt
resumes on every rank, and the losses match an uninterrupted run bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.sdk.ranks import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_distributed.py"
WORLD = 3
LINE = re.compile(r"^rank=(\d+) step=(\d+) loss=(\S+)$", re.MULTILINE)


def launch(store: Path, **env: str) -> tuple[list[int], dict[tuple[int, int], str], str]:
    """Run the example on WORLD local processes; exit codes, ``(rank, step) -> loss``, logs."""
    base = {
        **os.environ,
        "CKPT_STORE": f"file://{store}",
        "TOTAL_STEPS": "30",
        "SAVE_EVERY": "10",
        "WORLD_SIZE": str(WORLD),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    base.pop("KUBECONFIG", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLE)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WORLD)
    ]
    outputs = [p.communicate(timeout=150) for p in procs]
    losses = {(int(r), int(s)): loss for out, _ in outputs for r, s, loss in LINE.findall(out)}
    return [p.returncode for p in procs], losses, "\n".join(err for _, err in outputs)


def test_fail_one_rank_then_resume_bit_identically(tmp_path: Path) -> None:
    codes, reference, logs = launch(tmp_path / "reference")
    assert codes == [0] * WORLD, logs
    assert len(reference) == WORLD * 30

    codes, failed, logs = launch(tmp_path / "run", FAIL_AT_STEP="25", FAIL_RANK="1")
    assert codes[1] == 1 and all(code != 0 for code in codes), logs
    committed = sorted(e for e in os.listdir(tmp_path / "run") if not e.startswith("."))
    assert committed == ["step-0000000010.attempt-0", "step-0000000020.attempt-0"], logs
    assert all(failed[key] == reference[key] for key in failed)

    codes, resumed, logs = launch(tmp_path / "run", CKPT_ATTEMPT="1", FAIL_AT_STEP="25")
    assert codes == [0] * WORLD, logs
    assert logs.count("starting at step 20 (attempt 1)") == WORLD
    assert sorted(resumed) == [(rank, step) for rank in range(WORLD) for step in range(21, 31)]
    assert all(resumed[key] == reference[key] for key in resumed)
