"""examples/train.py runs without a cluster, fails where told and resumes after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"


def test_example_fails_then_resumes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CKPT_STORE": f"file://{tmp_path}/run",
        "TOTAL_STEPS": "60",
        "SAVE_EVERY": "20",
        "FAIL_AT_STEP": "50",
        "FAIL_EXIT_CODE": "3",
    }
    env.pop("KUBECONFIG", None)
    first = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 3, first.stderr
    assert sorted(os.listdir(tmp_path / "run")) == [
        "step-0000000020.attempt-0",
        "step-0000000040.attempt-0",
    ]
    env.pop("FAIL_AT_STEP")
    second = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert "starting at step 40" in second.stderr
    assert "step-0000000060.attempt-0" in os.listdir(tmp_path / "run")


def test_consumer_example_serves_the_newest_export(tmp_path: Path) -> None:
    env = {**os.environ, "CKPT_STORE": f"file://{tmp_path}/run", "CKPT_RUN": "local"}
    env.pop("KUBECONFIG", None)
    train = {**env, "TOTAL_STEPS": "40", "SAVE_EVERY": "20", "EXPORT_EVERY": "20"}
    subprocess.run([sys.executable, str(EXAMPLE)], env=train, check=True, timeout=120)
    served = subprocess.run(
        [sys.executable, str(EXAMPLE.with_name("consumer.py"))],
        env={**env, "MAX_POLLS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr
    assert "serving step 40" in served.stderr


def test_example_under_two_ranks_saves_on_every_rank(tmp_path: Path) -> None:
    """As under torchrun: save is collective, so every rank calls it; rank 0 alone exports."""
    from ckpt_operator.storage.manifest import read_manifest
    from ckpt_operator.storage.store import Store
    from tests.sdk.ranks import launch_script

    env = {
        "CKPT_STORE": f"file://{tmp_path}/run",
        "TOTAL_STEPS": "20",
        "SAVE_EVERY": "10",
        "EXPORT_EVERY": "20",
    }
    codes, _, logs = launch_script(EXAMPLE, 2, env, timeout_s=120)
    assert codes == [0, 0], "\n".join(logs)
    entries = sorted(os.listdir(tmp_path / "run"))
    assert entries == [
        "step-0000000010.attempt-0",
        "step-0000000020.attempt-0",
        "weights-0000000020.attempt-0",
    ], entries
    store = Store.from_uri(f"file://{tmp_path}/run")
    assert read_manifest(store, "step-0000000020.attempt-0").world_size == 2
