"""save_on_sigterm: a real SIGTERM within a grace period leaves a checkpoint and exit code 75."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

from ckpt_operator.api import names
from ckpt_operator.sdk import CheckpointManager, save_on_sigterm
from ckpt_operator.storage.layout import parse_committed
from ckpt_operator.storage.store import Store

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 20


def _committed_steps(store: Store) -> list[int]:
    found = (parse_committed(entry) for entry in store.list_entries())
    return sorted(name.step for name in found if name is not None)


def test_sigterm_saves_within_the_grace_period_and_exits_preempted(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/run"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tests.sdk.sigterm_trainer", uri],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert trainer.stdout is not None
    for line in trainer.stdout:  # let it train a few steps, as a kubelet would not wait
        if line.strip() == "step 5":
            break
    # What a kubelet does: SIGTERM, then SIGKILL once the grace period is over.
    trainer.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = trainer.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        trainer.kill()
        trainer.wait()
        raise AssertionError("no exit within the grace period") from None
    rest = trainer.stdout.read()
    assert code == names.EXIT_PREEMPTED, trainer.stderr.read() if trainer.stderr else ""
    assert time.monotonic() - sent < GRACE_S
    last = max(int(line.split()[1]) for line in ["step 5", *rest.splitlines()] if line)
    # One checkpoint, of the last completed step (printed, or completed inside hold() when
    # SIGTERM came and not printed), and it restores.
    [saved] = _committed_steps(Store.from_uri(uri))
    assert saved in (last, last + 1)
    assert CheckpointManager(uri, registry=None).restore() == saved


def test_a_sigterm_inside_hold_saves_after_the_block(tmp_path: Path) -> None:
    manager = CheckpointManager(f"file://{tmp_path}/run", registry=None)
    step = 1
    notice = save_on_sigterm(manager, lambda: {"step": step})
    with pytest.raises(SystemExit) as exited, notice as n, n.hold():
        os.kill(os.getpid(), signal.SIGTERM)
        assert n.requested and not _committed_steps(manager.store)
        step = 2  # the update the SIGTERM must not cut in half
    assert exited.value.code == names.EXIT_PREEMPTED
    assert _committed_steps(manager.store) == [2]
    # The previous handler is back.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sigterm_right_after_a_periodic_save_of_that_step_exits_preempted(
    tmp_path: Path,
) -> None:
    manager = CheckpointManager(f"file://{tmp_path}/run", registry=None)
    model = torch.nn.Linear(4, 4)
    manager.save(3, model=model)  # the periodic save; SIGTERM comes before step 4 ends
    with (
        pytest.raises(SystemExit) as exited,
        save_on_sigterm(manager, lambda: {"step": 3, "model": model}),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
    assert exited.value.code == names.EXIT_PREEMPTED
    assert _committed_steps(manager.store) == [3]


def test_save_on_sigterm_is_refused_under_a_process_group(tmp_path: Path) -> None:
    from tests.sdk.ranks import run_ranks

    store = f"file://{tmp_path}/run"

    def body(rank: int) -> str:
        manager = CheckpointManager(store, registry=None)
        try:
            with save_on_sigterm(manager, lambda: {"step": 1}):
                return "entered"
        except RuntimeError as exc:
            return str(exc)

    results = run_ranks(2, body, tmp_path / "ranks", timeout_s=30).ok()
    assert all("single-process only" in r for r in results), results
