"""``ckpt-operator dev up/down``: a control plane that outlives the command that started it.

``start`` launches this module as a detached supervisor process that owns the control plane and
tears it down on SIGTERM/SIGINT; its children die with it even on SIGKILL (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ckpt_operator.api import crdgen
from ckpt_operator.testing.binaries import cache_dir
from ckpt_operator.testing.controlplane import ControlPlane, ControlPlaneError

STATE_FILE = "state.json"


@dataclass(frozen=True)
class DevState:
    pid: int
    server: str
    kubeconfig: str


def default_dir() -> Path:
    return cache_dir().parent.parent / "dev"


def read_state(directory: Path) -> DevState | None:
    try:
        state = DevState(**json.loads((directory / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return None
    return state


def start(directory: Path, *, kwok: bool = False, timeout: float = 1800.0) -> DevState:
    """Start the supervisor (or return the running one) and wait until the API is ready.

    The timeout is long because the first start on a machine builds the binaries.
    """
    running = read_state(directory)
    if running is not None:
        return running
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    args = [sys.executable, "-m", "ckpt_operator.testing.devserver", str(directory)]
    with open(directory / "supervisor.log", "ab") as log:
        supervisor = subprocess.Popen(
            [*args, "--kwok"] if kwok else args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(directory)
        if state is not None:
            return state
        if supervisor.poll() is not None:
            raise ControlPlaneError(
                f"control plane failed to start; see {directory / 'supervisor.log'}"
            )
        time.sleep(0.2)
    supervisor.terminate()
    raise ControlPlaneError(f"control plane not ready after {timeout:.0f} s")


def stop(directory: Path, timeout: float = 30.0) -> bool:
    """Stop the supervisor; False when none was running."""
    state = read_state(directory)
    if state is None:
        return False
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return True


def _serve(directory: Path, kwok: bool) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    shutil.rmtree(directory / "cluster", ignore_errors=True)  # every `dev up` is a fresh cluster
    plane = ControlPlane(
        workdir=directory / "cluster",
        controller_manager=True,
        kwok=kwok,
        crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS],
    )
    with plane:
        state = DevState(pid=os.getpid(), server=plane.server, kubeconfig=str(plane.kubeconfig))
        tmp = directory / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(state)))
        tmp.rename(directory / STATE_FILE)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    (directory / STATE_FILE).unlink(missing_ok=True)


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), kwok="--kwok" in sys.argv[2:])
