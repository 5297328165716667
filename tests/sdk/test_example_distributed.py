"""examples/train_distributed.py on 3 local gloo ranks: one rank fails, the next attempt
resumes on every rank, and the losses match an uninterrupted run bit for bit."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.sdk.ranks import launch_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_distributed.py"
WORLD = 3
LINE = re.compile(r"^rank=(\d+) step=(\d+) loss=(\S+)$", re.MULTILINE)


def launch(store: Path, **env: str) -> tuple[list[int], dict[tuple[int, int], str], str]:
    """Run the example on WORLD local processes; exit codes, ``(rank, step) -> loss``, logs."""
    env = {"CKPT_STORE": f"file://{store}", "TOTAL_STEPS": "30", "SAVE_EVERY": "10", **env}
    codes, outs, errs = launch_script(EXAMPLE, WORLD, env)
    losses = {(int(r), int(s)): loss for out in outs for r, s, loss in LINE.findall(out)}
    return codes, losses, "\n".join(errs)


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
