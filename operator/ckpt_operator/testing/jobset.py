"""The JobSet controller (``sigs.k8s.io/jobset``) against the local control plane.

Built from its Go module and its CRD taken from the same module source
(:mod:`~ckpt_operator.testing.binaries`). Its own admission webhooks (JobSet defaulting and
validation, pod placement) are not registered: tests create fully defaulted JobSets, and the
webhook server the controller starts anyway gets a throwaway certificate on a loopback port.
Leader election, metrics and health probes are off; the Job controller of the local
controller-manager creates the pods of the Jobs it makes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Any

import yaml

from ckpt_operator.testing import binaries
from ckpt_operator.testing.controlplane import free_port, install_crds
from ckpt_operator.testing.lifecycle import Started

NAME = "jobset-controller"
RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"


def crds() -> list[dict[str, Any]]:
    """The JobSet CRDs of the module version the controller was built from."""
    binaries.ensure_binaries([NAME])
    found = []
    for path in sorted(binaries.crd_dir(NAME).glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


class JobSetController(Started):
    """The controller as a child process, logging to ``workdir/jobset-controller.log``."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{NAME}.log"

    def start(self) -> None:
        binary = binaries.ensure_binaries([NAME])[NAME]
        install_crds(self.kubeconfig, crds())
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        _serving_cert(certs)
        config = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": "0"},
        }
        config_path = self.workdir / "jobset-config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            [str(binary), f"--config={config_path}", "--zap-log-level=info"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            start_new_session=True,
        )

    def stop(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGTERM)
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _serving_cert(directory: Path) -> None:
    """``tls.crt``/``tls.key`` for the webhook server the controller starts unconditionally."""
    from ckpt_operator.handlers.webhook_server import WebhookServer

    cert, key = WebhookServer.build_certificate(["127.0.0.1", "localhost"])
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    (directory / "tls.key").chmod(0o600)
