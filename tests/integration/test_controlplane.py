"""The local control plane leaves nothing behind: not on Ctrl-C, not when its owner is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckpt_operator.testing import devserver

pytestmark = pytest.mark.integration

_OWNER = """
import json, signal, sys, time
from ckpt_operator.testing.controlplane import ControlPlane
# A test run started in the background by a shell without job control inherits SIGINT
# ignored, and Python then never turns Ctrl-C into KeyboardInterrupt: act as a terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)
with ControlPlane(controller_manager=True) as plane:
    print(json.dumps([p.popen.pid for p in plane.processes]), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent just has not reaped it).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _wait_all_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_no_component_outlives_its_owner(signum: int) -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 3 and all(_alive(pid) for pid in pids)
        owner.send_signal(signum)
        owner.wait(60)  # on Ctrl-C each of the three gets up to 10 s to stop before SIGKILL
        assert _wait_all_gone(pids) == [], "etcd/apiserver/controller-manager leaked"
    finally:
        owner.kill()
        owner.wait()


def test_dev_up_and_down(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "ckpt_operator", "dev"]
    up = subprocess.run(
        [*cli, "up", f"--dir={tmp_path}"], capture_output=True, text=True, check=True
    )
    kubeconfig = up.stdout.strip().removeprefix("export KUBECONFIG=")
    assert Path(kubeconfig).is_file()
    state = devserver.read_state(tmp_path)
    assert state is not None
    again = subprocess.run(
        [*cli, "up", f"--dir={tmp_path}"], capture_output=True, text=True, check=True
    )
    assert again.stdout == up.stdout, "a second `dev up` reuses the running control plane"
    subprocess.run([*cli, "down", f"--dir={tmp_path}"], check=True, capture_output=True)
    assert _wait_all_gone([state.pid]) == []
    assert devserver.read_state(tmp_path) is None
