"""A real single-node Kubernetes cluster without kind: pods run as real containers.

The local :class:`~ckpt_operator.testing.controlplane.ControlPlane` (etcd, kube-apiserver,
kube-controller-manager with every default controller) plus kube-scheduler, a kubelet and
kube-proxy built from Go modules, Debian's containerd and runc, and the CNI bridge plugin.

kind cannot run on this kind of machine: its node container is started ``--privileged``, and
runc cannot grant a privileged container every capability here (the machine's bounding set
lacks ``CAP_SYS_RESOURCE``: "unable to apply caps: operation not permitted"). This cluster runs
the same components directly on the machine instead.

Networking stays off the machine's own interfaces: a bridge of its own (``NODE_IP`` on it) is the
pods' gateway, the apiserver listens only there, and kube-proxy routes the ``kubernetes``
Service to it, so pods reach the API with their service-account tokens as in any cluster.
Everything started is stopped by ``stop()``: pods are removed through CRI, the bridge and
kube-proxy's rules are deleted, kubelet's mounts are unmounted and its cgroups removed.
Images persist in containerd's root under the user cache, so a warm start imports nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from ckpt_operator.testing import binaries, pki
from ckpt_operator.testing.controlplane import ControlPlane, ControlPlaneError, free_port, http_ok
from ckpt_operator.testing.docker import ensure_commands, unmount_under
from ckpt_operator.testing.node_host import (
    BRIDGE,
    CGROUP_ROOT,
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    cache_root,
    cgroup_driver,
    cni_config,
    containerd_config,
    node_lock,
    qualified,
    read_sysctls,
    remove_kubelet_chains,
    remove_kubepods_cgroups,
    run_command,
    write_sysctls,
)

log = logging.getLogger(__name__)


class NodeUnavailable(RuntimeError):
    """This machine cannot run the node (not root, not Linux, no cgroups, …)."""


def node_problem() -> str | None:
    """Why a real node cannot run here, or None."""
    if os.uname().sysname != "Linux":
        return "the e2e node needs Linux"
    if os.geteuid() != 0:
        return "the e2e node (kubelet, containerd, a bridge) needs root"
    if not (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists():
        return f"no memory cgroup under {CGROUP_ROOT}"
    if shutil.which("go") is None and binaries.find_binary("kubelet") is None:
        return "no Go toolchain to build kubelet and no cached kubelet"
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        return "no containerd and no apt-get to install Debian's"
    return None


@dataclass
class KubeletCluster(ControlPlane):
    """The control plane plus one real node (containerd + kubelet + kube-proxy + scheduler)."""

    controller_manager: bool = True
    node_name: str = NODE_NAME
    node_timeout: float = 180.0
    _serving: pki.Serving | None = None
    _state: tempfile.TemporaryDirectory[str] | None = None
    # The pod sandbox ("pause") image; it must be imported before pods start.
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    containerd_socket: Path = Path()
    bins: dict[str, Path] = field(default_factory=dict)
    _node_processes: list[str] = field(default_factory=list)
    _lock: IO[str] | None = None
    _sysctls: dict[str, str] = field(default_factory=dict)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        problem = node_problem()
        if problem:
            raise NodeUnavailable(problem)
        ensure_commands(
            {
                "containerd": "containerd",
                "ctr": "containerd",
                "runc": "runc",
                "iptables": "iptables",
                "ip": "iproute2",
            }
        )
        self.bins = binaries.ensure_binaries(
            ["etcd", "kube-apiserver", "kube-controller-manager", *binaries.NODE]
        )
        # One node per machine at a time: the bridge, the pod network and containerd's root
        # are the machine's. A second session (another worktree's tests) waits here.
        self._lock = node_lock()
        try:
            self._make_bridge()
            super().start()
            self.start_containerd()
            self._start_scheduler()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_node_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # No new pods (controllers, scheduler), then every pod removed by its kubelet, so
        # sandboxes go through CRI and CNI teardown; then the node components.
        self._stop_named("kube-controller-manager", "kube-scheduler")
        if any(p.name == "kubelet" for p in self.processes):
            self._delete_all_pods()
        self._stop_named("kube-proxy", "kubelet")
        write_sysctls(self._sysctls)
        self._sysctls = {}
        if self.containerd_socket.exists():
            self.sweep_containers()
        super().stop()
        kube_proxy = binaries.find_binary("kube-proxy")
        if kube_proxy is not None and self._node_processes:
            run_command([str(kube_proxy), "--cleanup"], check=False)
        if self._node_processes:
            remove_kubelet_chains()
        self._node_processes.clear()
        run_command(["ip", "link", "delete", BRIDGE], check=False)
        if self.workdir is not None:
            unmount_under(self.workdir)
        if self._state is not None:
            unmount_under(Path(self._state.name))
            self._state.cleanup()
            self._state = None
        remove_kubepods_cgroups()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _stop_named(self, *names: str) -> None:
        for process in [p for p in self.processes if p.name in names]:
            process.stop()
            self.processes.remove(process)

    def _delete_all_pods(self, timeout: float = 90) -> None:
        """Force-delete every pod; wait until the kubelet has stopped all their containers."""
        from kubernetes import client

        from ckpt_operator.testing.controlplane import api_client

        try:
            with api_client(self.kubeconfig) as api:
                core = client.CoreV1Api(api)
                pods: list[Any] = core.list_pod_for_all_namespaces().items
                for pod in pods:
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
        except Exception as error:  # the apiserver may be the thing that failed
            log.warning("could not delete pods through the API: %s", error)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._running_tasks():
            time.sleep(1)

    def _running_tasks(self) -> list[str]:
        try:
            lines = self.ctr("tasks", "list").splitlines()[1:]
        except ControlPlaneError:
            return []
        return [line.split()[0] for line in lines if line.split()[-1:] == ["RUNNING"]]

    def prune_images(self, keep: Iterable[str], repositories: Iterable[str]) -> None:
        """Remove images of ``repositories`` other than ``keep``, and the ``sha256:<id>`` names
        the CRI plugin adds for them, waiting for containerd to collect their content.

        Only ``ckpt-operator:e2e-*`` tags of ``ckpt-operator`` count as ours.
        """
        targets = self.image_targets()
        wanted = {qualified(ref) for ref in keep}
        kept_targets = {targets[name] for name in wanted if name in targets}
        prefixes = tuple(qualified(repo) + ":" for repo in repositories)
        operator = qualified("ckpt-operator") + ":"
        for name, target in targets.items():
            if name in wanted:
                continue
            ours = name.startswith(prefixes) and (
                not name.startswith(operator) or name.startswith(operator + "e2e-")
            )
            stale_id = name.startswith("sha256:") and target not in kept_targets
            if ours or stale_id:
                self.ctr("images", "remove", "--sync", name)

    def image_targets(self) -> dict[str, str]:
        """Image name -> the digest it points at (its manifest or index)."""
        lines = self.ctr("images", "list").splitlines()[1:]
        return {line.split()[0]: line.split()[2] for line in lines if len(line.split()) > 2}

    def sweep_containers(self) -> None:
        """Remove every container containerd still has in k8s.io (leftovers of a crash)."""
        try:
            containers = self.ctr("containers", "list", "--quiet").split()
        except ControlPlaneError:
            return
        for container in containers:
            run_command(
                [
                    "ctr",
                    f"--address={self.containerd_socket}",
                    "--namespace=k8s.io",
                    "tasks",
                    "delete",
                    "--force",
                    container,
                ],
                check=False,
            )
            run_command(
                [
                    "ctr",
                    f"--address={self.containerd_socket}",
                    "--namespace=k8s.io",
                    "containers",
                    "delete",
                    container,
                ],
                check=False,
            )

    # -- host networking -------------------------------------------------------------------------

    def _make_bridge(self) -> None:
        """The pods' bridge with the node IP on it; the CNI bridge plugin reuses it."""
        run_command(["ip", "link", "delete", BRIDGE], check=False)
        run_command(["ip", "link", "add", BRIDGE, "type", "bridge"])
        prefix = ipaddress.ip_network(POD_CIDR).prefixlen
        run_command(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE])
        run_command(["ip", "link", "set", BRIDGE, "up"])
        self._node_processes.append("bridge")

    # -- control plane overrides -----------------------------------------------------------------

    def _start_apiserver(self, apiserver: Path, certs: pki.Pki, etcd_url: str) -> None:
        assert self.workdir is not None
        self._serving = pki.serving_for(
            self.workdir / "pki", certs.ca_cert, [NODE_IP, KUBERNETES_SERVICE_IP]
        )
        port = free_port()
        self.server = f"https://{NODE_IP}:{port}"
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={NODE_IP}",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={port}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={certs.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={certs.sa_public}",
                f"--service-account-signing-key-file={certs.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # For logs and exec: the kubelet trusts client certs of the cluster CA.
                f"--kubelet-client-certificate={certs.admin_cert}",
                f"--kubelet-client-key={certs.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=false",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _write_kubeconfig(self, certs: pki.Pki) -> None:
        assert self._serving is not None
        super()._write_kubeconfig(dataclasses.replace(certs, ca_cert=self._serving.ca_bundle))

    def _wait_ready(self, certs: pki.Pki) -> None:
        assert self._serving is not None
        super()._wait_ready(dataclasses.replace(certs, ca_cert=self._serving.ca_bundle))

    def _start_controller_manager(self, kcm: Path, certs: pki.Pki) -> None:
        assert self._serving is not None
        self._spawn(
            "kube-controller-manager",
            [
                str(kcm),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                # Published to every namespace as kube-root-ca.crt for service-account tokens.
                f"--root-ca-file={self._serving.ca_bundle}",
                f"--service-account-private-key-file={certs.sa_private}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

    # -- node components -------------------------------------------------------------------------

    def start_containerd(self) -> None:
        """Debian's containerd on private paths; its root (images) persists in the cache."""
        assert self.workdir is not None
        # Short: the state directory holds sockets (108-byte limit on their paths).
        self._state = tempfile.TemporaryDirectory(prefix="ckpt-e2e-ctrd-", dir="/run")
        state = Path(self._state.name)
        self.containerd_socket = state / "containerd.sock"
        root = cache_root() / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-ckpt-e2e.conflist").write_text(json.dumps(cni_config(self.workdir)))
        config = self.workdir / "containerd.toml"
        config.write_text(
            containerd_config(
                root=root,
                state=state,
                socket=self.containerd_socket,
                cni_bin=self.bins["cni-plugins"],
                cni_conf=cni_conf,
                pause=self.sandbox_image,
            )
        )
        containerd = shutil.which("containerd")
        assert containerd is not None
        process = self._spawn("containerd", [containerd, f"--config={config}"])
        self._wait_for(process, self.containerd_socket.exists, "containerd socket")
        self._wait_for(process, self._ctr_ok, "containerd API")
        # Leftovers of an earlier run that died before cleaning up.
        self.sweep_containers()

    def ctr(self, *args: str, timeout: float = 600, input: bytes | None = None) -> str:
        return run_command(
            ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            timeout=timeout,
            input=input,
        )

    def _ctr_ok(self) -> bool:
        try:
            self.ctr("version", timeout=10)
        except (ControlPlaneError, subprocess.TimeoutExpired):
            return False
        return True

    def image_names(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").split())

    def has_image(self, ref: str) -> bool:
        return qualified(ref) in self.image_names()

    def import_image(self, stream: Any, ref: str) -> None:
        """Import a ``docker save`` stream (a readable pipe) into the k8s.io namespace."""
        proc = subprocess.run(
            [
                "ctr",
                f"--address={self.containerd_socket}",
                "--namespace=k8s.io",
                "images",
                "import",
                "-",
            ],
            stdin=stream,
            capture_output=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise ControlPlaneError(f"ctr import {ref} failed: {proc.stderr.decode()[-2000:]}")
        if not self.has_image(ref):
            raise ControlPlaneError(f"ctr import did not bring {ref}: {sorted(self.image_names())}")

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(self.bins["kube-scheduler"]),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _start_kubelet(self) -> None:
        assert self.workdir is not None and self._serving is not None
        root = self.workdir / "kubelet"
        root.mkdir(exist_ok=True)
        healthz = free_port()
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.workdir / "pki" / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": cgroup_driver(),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "failSwapOn": False,
            # Lowering its own oom_score_adj needs CAP_SYS_RESOURCE (see the containerd config).
            "oomScoreAdj": 0,
            "failCgroupV1": False,
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            # The images are imported, never pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "evictionPressureTransitionPeriod": "10s",
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "localStorageCapacityIsolation": True,
            "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
        }
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        # The kubelet sets these kernel tunables for itself; stop() puts them back.
        self._sysctls = read_sysctls()
        self._node_processes.append("kubelet")
        process = self._spawn(
            "kubelet",
            [
                str(self.bins["kubelet"]),
                f"--config={config_path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={NODE_IP}",
                "--v=2",
            ],
        )
        self._wait_for(
            process, lambda: http_ok(f"http://127.0.0.1:{healthz}/healthz"), "kubelet /healthz"
        )

    def _start_kube_proxy(self) -> None:
        assert self.workdir is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": self.node_name,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's sysctls alone: conntrack sizes and timeouts, route_localnet.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._node_processes.append("kube-proxy")
        self._spawn("kube-proxy", [str(self.bins["kube-proxy"]), f"--config={path}", "--v=1"])

    def _wait_node_ready(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from ckpt_operator.testing.controlplane import api_client

        deadline = time.monotonic() + self.node_timeout
        last = "not registered"
        with api_client(self.kubeconfig) as api:
            core = client.CoreV1Api(api)
            while time.monotonic() < deadline:
                for process in self.processes:
                    process.check_alive()
                try:
                    node: Any = core.read_node(self.node_name)
                    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                    last = f"{ready[0].reason}: {ready[0].message}" if ready else "no condition"
                    if ready and ready[0].status == "True":
                        core.read_namespaced_service_account("default", "default")
                        return
                except ApiException as error:
                    last = f"{error.status} {error.reason}"
                time.sleep(1)
        kubelet = next(p for p in self.processes if p.name == "kubelet")
        raise ControlPlaneError(
            f"node {self.node_name} not Ready after {self.node_timeout:.0f} s ({last}); "
            f"kubelet log: {kubelet.log_path}\n{kubelet.tail(40)}"
        )
