"""Run a function on N gloo ranks forked from the test process (CPU only, loopback only).

Forking an already-imported interpreter makes a rank cost milliseconds instead of seconds of
``import torch``. Children must not run large kernels (torch's thread pools do not survive
fork), so they run single-threaded and only save, load and compare small states. A rank
reports back by returning a JSON-able value, written to a file the parent reads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

RAISED = 3
"""Exit status of a rank whose body raised."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(rank: int, world: int, port: int, out: Path, body: Callable[[int], Any]) -> None:
    code = RAISED
    try:
        torch.set_num_threads(1)
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=30),
        )
        result = body(rank)
        (out / f"result-{rank}.json").write_text(json.dumps(result))
        code = 0
    except BaseException as exc:
        (out / f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


class Ranks:
    """Outcome of one run: each rank's wait status, returned value and error text."""

    def __init__(self, statuses: list[int], out: Path) -> None:
        self.statuses = statuses
        self.results = [_read(out / f"result-{r}.json", json.loads) for r in range(len(statuses))]
        self.errors = [_read(out / f"error-{r}.txt", str) for r in range(len(statuses))]

    def ok(self) -> list[Any]:
        assert all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in self.statuses), self.errors
        return self.results

    def killed(self, rank: int) -> bool:
        status = self.statuses[rank]
        return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    def succeeded(self, rank: int) -> bool:
        status = self.statuses[rank]
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    def raised(self, rank: int) -> bool:
        status = self.statuses[rank]
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == RAISED


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    return parse(path.read_text()) if path.exists() else None


def run_ranks(world: int, body: Callable[[int], Any], out: Path, timeout_s: float = 60) -> Ranks:
    """Fork ``world`` ranks running ``body(rank)``; SIGKILL any still running at the deadline."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*-*.*"):
        stale.unlink()
    port = free_port()
    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            _child(rank, world, port, out, body)
        pids.append(pid)
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(statuses) < world and time.monotonic() < deadline:
        for rank, pid in enumerate(pids):
            if rank not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[rank] = status
        time.sleep(0.005)
    hung = [rank for rank in range(world) if rank not in statuses]
    for rank in hung:
        os.kill(pids[rank], signal.SIGKILL)
        os.waitpid(pids[rank], 0)
    assert not hung, f"ranks {hung} hung past {timeout_s}s"
    return Ranks([statuses[r] for r in range(world)], out)


def launch_script(
    script: Path, world: int, env: dict[str, str], timeout_s: float = 150
) -> tuple[list[int], list[str], list[str]]:
    """Run ``script`` as ``world`` local processes with the env torchrun gives each rank (a
    fresh interpreter each, as in a real job); exit codes, stdouts and stderrs per rank."""
    base = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    base.pop("KUBECONFIG", None)  # no cluster: the SDK must not register with one
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    try:
        outputs = [p.communicate(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], [o for o, _ in outputs], [e for _, e in outputs]
