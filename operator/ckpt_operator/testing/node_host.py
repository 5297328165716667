"""The host side of the e2e node: its network, containerd's config, and undoing what kubelet
leaves behind (cgroups, iptables chains, sysctls) so a machine is as it was after ``stop()``."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from ckpt_operator.testing import binaries
from ckpt_operator.testing.controlplane import ControlPlaneError

log = logging.getLogger(__name__)

NODE_NAME = "ckpt-e2e-node"
BRIDGE = "ckpt-e2e0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cache_root() -> Path:
    return binaries.cache_dir().parents[1]


def run_command(
    args: list[str], *, timeout: float = 120, check: bool = True, input: bytes | None = None
) -> str:
    proc = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise ControlPlaneError(f"{' '.join(args)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def node_lock() -> IO[str]:
    path = cache_root() / "e2e-node.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 - held until stop()
    log.info("waiting for %s (one e2e node per machine)", path)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def qualified(ref: str) -> str:
    """containerd's name for an image reference (``docker.io/library/`` as Docker means it)."""
    name = ref
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return name


def cgroup_driver() -> str:
    return "cgroupfs"


def cni_config(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "ckpt-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def containerd_config(
    *, root: Path, state: Path, socket: Path, cni_bin: Path, cni_conf: Path, pause: str
) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{state}/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
[{cri}]
  sandbox_image = "{pause}"
  # No container gets an oom_score_adj below containerd's own: lowering it needs
  # CAP_SYS_RESOURCE, which machines like this one do not grant even to root.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"""


def remove_kubepods_cgroups() -> None:
    """rmdir the (empty, once every pod is gone) cgroups kubelet made, deepest first."""
    for top in [CGROUP_ROOT, *sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]:
        kubepods = top / "kubepods"
        if not kubepods.is_dir():
            continue
        for path in sorted(
            (p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            kubepods.rmdir()


# iptables chains the kubelet makes for itself (kube-proxy --cleanup removes only its own).
_KUBELET_CHAINS = {
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY",),
    "mangle": ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"),
}


def remove_kubelet_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table, chains in _KUBELET_CHAINS.items():
            for chain in chains:
                for parent in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"):
                    run_command([tool, "-t", table, "-D", parent, "-j", chain], check=False)
                run_command([tool, "-t", table, "-F", chain], check=False)
                run_command([tool, "-t", table, "-X", chain], check=False)


# What the kubelet's container manager sets at start (setupKernelTunables).
_KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in _KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value)
