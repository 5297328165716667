"""A Docker engine for the e2e tier: the one that answers, or Debian's ``docker.io`` started here.

The e2e tier builds its images with ``docker build`` (the operator's own ``Dockerfile``). When no
engine answers and the machine allows it (root, Debian's apt), :func:`docker_engine` installs
Debian's ``docker.io`` and starts a private ``dockerd`` on its own socket, data root and exec
root, without touching iptables (builds use the host network), and stops it again on exit. An
engine that already answered is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_LIBNETWORK_RUN = Path("/run/docker")


class DockerUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here; the message says why."""


def _command_problem(args: list[str], env: dict[str, str], timeout: float = 30) -> str | None:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
        )
    except subprocess.TimeoutExpired:
        return f"`{' '.join(args)}` did not answer within {timeout:.0f} s"
    except OSError as error:
        return f"`{' '.join(args)}`: {error}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`{' '.join(args)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return None


def answering_engine_problem(env: dict[str, str] | None = None) -> str | None:
    """Why no running Docker engine answers (None when one does)."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` CLI on PATH"
    return _command_problem([docker, "info", "--format", "{{.ServerVersion}}"], env or {})


def apt_install(packages: list[str], timeout: float = 900) -> None:
    """``apt-get install`` Debian packages (root), refreshing the lists once when it fails."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerUnavailable(f"cannot install {packages}: needs root and Debian's apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    log.info("installing %s", " ".join(packages))
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        subprocess.run(
            ["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=timeout
        )
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise DockerUnavailable(f"apt-get install {packages} failed:\n{proc.stderr[-2000:]}")


def ensure_commands(commands: dict[str, str]) -> None:
    """Install the Debian package named for each command missing from PATH."""
    missing = sorted({pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None})
    if missing:
        apt_install(missing)


@dataclass
class DockerEngine:
    """A Docker CLI environment that reaches an engine; ``stop`` ends the one it started."""

    env: dict[str, str] = field(default_factory=dict)
    started: bool = False
    _popen: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _log: Path | None = None
    _run_docker_existed: bool = True

    def docker(self, *args: str, timeout: float = 600, input: bytes | None = None) -> str:
        """Run the docker CLI against this engine; raise with its output when it fails."""
        docker = shutil.which("docker")
        assert docker is not None
        proc = subprocess.run(
            [docker, *args],
            capture_output=True,
            timeout=timeout,
            input=input,
            env={**os.environ, **self.env},
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout.decode(errors='replace')[-3000:]}\n"
                f"{proc.stderr.decode(errors='replace')[-3000:]}"
            )
        return proc.stdout.decode(errors="replace")

    def has_image(self, ref: str) -> bool:
        docker = shutil.which("docker")
        assert docker is not None
        proc = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Id}}", ref],
            capture_output=True,
            env={**os.environ, **self.env},
            timeout=60,
        )
        return proc.returncode == 0

    def start_private(self, data_root: Path | None = None, startup_timeout: float = 60) -> None:
        """Install (if needed) and start Debian's dockerd on private paths.

        ``data_root`` (images, layers) may outlive the engine, e.g. in a cache; by default it is
        temporary too.
        """
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker engine answers, and starting one needs root")
        ensure_commands({"dockerd": "docker.io", "docker": "docker.io", "containerd": "containerd"})
        # A short path: dockerd's exec root holds containerd's sockets (108-byte limit).
        # libnetwork keeps the host's netns bind-mounted under /run/docker whatever the exec
        # root; remove that on stop unless it was there before.
        self._run_docker_existed = _LIBNETWORK_RUN.exists()
        self._tmp = tempfile.TemporaryDirectory(prefix="ckpt-dockerd-", dir="/run")
        root = Path(self._tmp.name)
        self._log = root / "dockerd.log"
        sock = root / "docker.sock"
        self.env = {"DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
        dockerd = shutil.which("dockerd")
        assert dockerd is not None
        with open(self._log, "wb") as out:
            self._popen = subprocess.Popen(
                [
                    dockerd,
                    f"--host=unix://{sock}",
                    f"--data-root={data_root or root / 'data'}",
                    f"--exec-root={root / 'exec'}",
                    f"--pidfile={root / 'dockerd.pid'}",
                    # Builds and saves only: no bridge, no iptables rules on this machine.
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = True
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                break
            if answering_engine_problem(self.env) is None:
                log.info("started dockerd (pid %d) on %s", self._popen.pid, sock)
                return
            time.sleep(0.5)
        tail = self._log.read_text(errors="replace")[-3000:]
        self.stop()
        raise DockerUnavailable(f"dockerd did not come up within {startup_timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGTERM)
            try:
                self._popen.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        self._popen = None
        if self._tmp is not None:
            # Overlay mounts of a crashed build could remain; unmount before removing.
            unmount_under(Path(self._tmp.name))
            self._tmp.cleanup()
            self._tmp = None
            if not self._run_docker_existed and _LIBNETWORK_RUN.exists():
                unmount_under(_LIBNETWORK_RUN)
                shutil.rmtree(_LIBNETWORK_RUN, ignore_errors=True)
        self.started = False


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount point below ``root``, deepest first (kubelet, build leftovers)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def docker_engine(data_root: Path | None = None) -> Iterator[DockerEngine]:
    """An engine that answers: the running one, else a private dockerd started (and stopped)."""
    engine = DockerEngine()
    problem = answering_engine_problem()
    if problem is None:
        yield engine
        return
    log.info("no Docker engine answers (%s); starting Debian's dockerd", problem)
    try:
        engine.start_private(data_root)
        yield engine
    finally:
        engine.stop()
