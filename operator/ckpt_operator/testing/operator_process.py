"""The operator as a real child process, so tests can SIGKILL it at any instant.

Crash convergence is tested by killing it mid-decision and starting it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ckpt_operator.testing.controlplane import ControlPlaneError, free_port, http_ok
from ckpt_operator.testing.lifecycle import Started


class OperatorProcess(Started):
    """``python -m ckpt_operator run`` against a kubeconfig, started and killed on demand."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        namespaces: Sequence[str] = (),
        allowed_roots: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        module: str = "ckpt_operator",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = list(namespaces)
        self.allowed_roots = list(allowed_roots)
        self.extra_args = list(extra_args)
        self.module = module
        """Run as ``python -m <module> run``: a wrapper may set the process up first."""
        self.metrics_port = 0
        self.liveness_url = ""
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> None:
        """Start and wait until Kopf's liveness endpoint answers (unless not ``wait``: a kill
        may then land during start-up)."""
        liveness_port, self.metrics_port = free_port(), free_port()
        self.liveness_url = f"http://127.0.0.1:{liveness_port}/healthz"
        args = [sys.executable, "-m", self.module, "run", f"--metrics-port={self.metrics_port}"]
        args += [f"--liveness={self.liveness_url}", *self.extra_args]
        args += [f"--namespace={ns}" for ns in self.namespaces]
        args += [f"--allowed-root={root}" for root in self.allowed_roots]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            start_new_session=True,
        )
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                raise ControlPlaneError(f"operator exited early; log: {self.log_path}")
            if http_ok(self.liveness_url):
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"operator not live after {timeout:.0f} s; log: {self.log_path}")

    @property
    def pid(self) -> int:
        """The running operator's process id."""
        assert self._popen is not None, "not started"
        return self._popen.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, like a node dying."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self._popen is not None and self._popen.poll() is None:
            os.killpg(self._popen.pid, signum)
            try:
                self._popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator process has used so far (Linux ``/proc``)."""
        if self._popen is None:
            raise ControlPlaneError("the operator was never started")
        fields = Path(f"/proc/{self._popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
