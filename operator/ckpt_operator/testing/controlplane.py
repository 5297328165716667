"""A real local Kubernetes control plane on loopback: etcd + kube-apiserver (+ GC, + kwok).

The Python counterpart of controller-runtime's envtest. Every port is chosen free at start, the
PKI is made fresh, RBAC authorization is on, and everything is torn down on ``stop()``: children
run in their own process group, get SIGKILL if the starting thread dies (``PR_SET_PDEATHSIG``), and
``stop`` is also registered with ``atexit``, so no etcd or apiserver outlives the tests.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import ctypes
import logging
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from ckpt_operator.testing import binaries, pki
from ckpt_operator.testing.lifecycle import Started

log = logging.getLogger(__name__)

KWOK_NODE = "kwok-node-0"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Pods carrying this annotation are left alone by kwok so tests can drive their status.
KWOK_HANDS_OFF_ANNOTATION = "kwok.x-k8s.io/status"

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the thread that started it exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message points at the component's log."""


@dataclass
class _Process:
    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.popen.returncode}; log: {self.log_path}\n"
                + self.tail()
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class ControlPlane(Started):
    """etcd and kube-apiserver, optionally kube-controller-manager (GC) and kwok.

    CRDs given in ``crds`` are installed (and Established) before the controller-manager starts,
    so its garbage collector watches them from its first discovery pass.
    """

    workdir: Path | None = None
    controller_manager: bool = False
    kwok: bool = False
    crds: Iterable[dict[str, Any]] = ()
    startup_timeout: float = 120.0
    processes: list[_Process] = field(default_factory=list)
    server: str = ""
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _certs: pki.Pki | None = None

    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "kubeconfig"

    def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ckpt-controlplane-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        names = ["etcd", "kube-apiserver"]
        names += ["kube-controller-manager"] if self.controller_manager else []
        names += ["kwok"] if self.kwok else []
        bins = binaries.ensure_binaries(names)
        atexit.register(self.stop)
        try:
            certs = self._certs = pki.create(self.workdir / "pki")
            etcd_url = self._start_etcd(bins["etcd"])
            self._start_apiserver(bins["kube-apiserver"], certs, etcd_url)
            self._write_kubeconfig(certs)
            self._wait_ready(certs)
            install_crds(self.kubeconfig, self.crds)
            if self.controller_manager:
                self._start_controller_manager(bins["kube-controller-manager"], certs)
            if self.kwok:
                self._start_kwok(bins["kwok"])
        except BaseException:
            self.stop()
            raise

    def restart_apiserver(self, *, down_s: float = 0.0, crash: bool = False) -> float:
        """Stop the kube-apiserver (gracefully, or at once with ``crash``) and start it again on
        the same port, with the same certificates and etcd: every connection and watch drops,
        nothing stored is lost. Returns the ``time.monotonic()`` at which it answered again."""
        assert self._certs is not None, "not started"
        process = self._process("kube-apiserver")
        process.stop(grace=0.0 if crash else 10.0)
        time.sleep(down_s)
        process.start()
        self._wait_ready(self._certs)
        return time.monotonic()

    def _process(self, name: str) -> _Process:
        return next(p for p in self.processes if p.name == name)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        atexit.unregister(self.stop)

    def _spawn(self, name: str, args: list[str]) -> _Process:
        assert self.workdir is not None
        process = _Process(name, args, self.workdir / "logs" / f"{name}.log")
        process.start()
        self.processes.append(process)
        return process

    def _start_etcd(self, etcd: Path) -> str:
        assert self.workdir is not None
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        process = self._spawn(
            "etcd",
            [
                str(etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",  # test data is thrown away; fsync only slows the suite
                "--log-level=warn",
            ],
        )
        self._wait_for(process, lambda: http_ok(f"{url}/health"), "etcd /health")
        return url

    def _start_apiserver(self, apiserver: Path, certs: pki.Pki, etcd_url: str) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={certs.sa_public}",
                f"--service-account-signing-key-file={certs.sa_private}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # No token controller runs unless asked for; pods must not wait for one.
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _write_kubeconfig(self, certs: pki.Pki) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority": str(certs.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(certs.admin_cert),
                        "client-key": str(certs.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _wait_ready(self, certs: pki.Pki) -> None:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        apiserver = self._process("kube-apiserver")
        self._wait_for(
            apiserver, lambda: http_ok(f"{self.server}/readyz", context), "kube-apiserver /readyz"
        )

    def _start_controller_manager(self, kcm: Path, certs: pki.Pki) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(kcm),
                f"--kubeconfig={self.kubeconfig}",
                # The Job controller lets tests attach TrainingRuns to real Jobs (and JobSets).
                "--controllers=garbagecollector,namespace,serviceaccount,job",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--root-ca-file={certs.ca_cert}",
                f"--service-account-private-key-file={certs.sa_private}",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

    def _start_kwok(self, kwok: Path) -> None:
        self._spawn(
            "kwok",
            [
                str(kwok),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--disregard-status-with-annotation-selector={KWOK_HANDS_OFF_ANNOTATION}=custom",
                "--cidr=10.0.1.0/24",
                "--node-ip=10.0.1.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        from kubernetes import client

        with api_client(self.kubeconfig) as api:
            node = client.V1Node(
                metadata=client.V1ObjectMeta(
                    name=KWOK_NODE,
                    annotations={KWOK_NODE_ANNOTATION: "fake"},
                    labels={"type": "kwok", "kubernetes.io/hostname": KWOK_NODE},
                )
            )
            client.CoreV1Api(api).create_node(node)

    def _wait_for(self, process: _Process, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            process.check_alive()
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{what} not ready after {self.startup_timeout:.0f} s; log: {process.log_path}\n"
            + process.tail()
        )


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def api_client(kubeconfig: Path) -> Iterator[Any]:
    """A sync ``kubernetes`` ApiClient for ``kubeconfig``, closed on exit."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


def install_crds(
    kubeconfig: Path, documents: Iterable[dict[str, Any]], timeout: float = 30.0
) -> None:
    """Create (or replace) the CRDs and wait until each is Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    documents = [copy.deepcopy(doc) for doc in documents]
    if not documents:
        return
    with api_client(kubeconfig) as api:
        # The client accepts plain dicts at runtime; its annotations only name model classes.
        crds: Any = client.ApiextensionsV1Api(api)
        for doc in documents:
            try:
                crds.create_custom_resource_definition(doc)
            except ApiException as error:
                if error.status != 409:
                    raise
                current = crds.read_custom_resource_definition(doc["metadata"]["name"])
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                crds.replace_custom_resource_definition(doc["metadata"]["name"], doc)
        deadline = time.monotonic() + timeout
        for doc in documents:
            name = doc["metadata"]["name"]
            while True:
                status = crds.read_custom_resource_definition(name).status
                if any(
                    c.type == "Established" and c.status == "True" for c in status.conditions or []
                ):
                    break
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"CRD {name} not Established after {timeout:.0f} s")
                time.sleep(0.1)
