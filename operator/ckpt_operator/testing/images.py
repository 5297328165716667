"""Container images for the e2e tier, built offline from Debian packages and PyPI.

No container registry is reachable, so nothing is pulled:

* ``base``: a Debian root file system made by ``debootstrap`` from the machine's own apt mirror
  (python3, venv, CA certificates, catatonit), imported with ``docker import``. It trusts what
  the machine trusts (the host's CA bundle), so pip inside builds reaches PyPI as the host does.
* ``pause``: the pod sandbox image, ``catatonit -P`` on the base (Debian's pause process).
* ``operator``: the repository's ``Dockerfile``, built with ``PYTHON_IMAGE`` set to the base.
* ``trainer``: ``images/trainer/Dockerfile``: torch and the SDK from PyPI plus ``examples/``.

Every tag carries a hash of its inputs, so a changed input makes a new image and an unchanged one
is found again. Docker's data root lives in the user cache (``~/.cache/ckpt-operator/docker``),
so built images and their layers survive the private ``dockerd`` that built them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ckpt_operator.testing import binaries
from ckpt_operator.testing.docker import DockerEngine, docker_engine, ensure_commands

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
IMAGES_DIR = REPO / "images"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "catatonit")
# Bump to rebuild every image when the way they are made changes.
RECIPE = "1"


def cache_root() -> Path:
    """``~/.cache/ckpt-operator`` (or ``$CKPT_OPERATOR_CACHE``), shared with the binaries."""
    return binaries.cache_dir().parents[1]


def os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value:
            return value.strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME (not Debian?)")


def debian_mirror(suite: str) -> str:
    """The machine's own apt mirror for ``suite`` (deb822 ``.sources`` or ``sources.list``)."""
    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                return fields["uris"].split()[0]
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise RuntimeError(f"no apt source for {suite!r} in /etc/apt: cannot run debootstrap")


def host_ca_bundle() -> Path:
    candidates = [os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile]
    for candidate in [*candidates, "/etc/ssl/certs/ca-certificates.crt"]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("no CA bundle on this machine to give the base image")


def _digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(
                p
                for p in ([part] if part.is_file() else part.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
            )
            for file in files:
                h.update(str(file.relative_to(REPO)).encode())
                h.update(file.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Images:
    base: str
    pause: str
    operator: str
    trainer: str

    def all(self) -> list[str]:
        return [self.base, self.pause, self.operator, self.trainer]


def image_tags() -> Images:
    """The tags the current inputs give, without building anything."""
    suite = os_codename()
    base = "ckpt-e2e/debian-python:" + _digest(
        RECIPE, suite, " ".join(BASE_PACKAGES), host_ca_bundle().read_bytes()
    )
    sources = [REPO / "pyproject.toml", REPO / "README.md", REPO / "operator" / "ckpt_operator"]
    pause = "ckpt-e2e/pause:" + _digest(base, IMAGES_DIR / "pause")
    operator = "ckpt-operator:e2e-" + _digest(
        base, REPO / "Dockerfile", REPO / ".dockerignore", *sources
    )
    trainer = "ckpt-e2e/trainer:" + _digest(
        base, IMAGES_DIR / "trainer", REPO / "examples" / "train.py", *sources
    )
    return Images(base=base, pause=pause, operator=operator, trainer=trainer)


def build_images(engine: DockerEngine) -> Images:
    """Build every image the current inputs name and the engine lacks; return the tags."""
    tags = image_tags()
    if not engine.has_image(tags.base):
        _build_base(engine, tags.base)
    if not engine.has_image(tags.pause):
        _timed(tags.pause, lambda: _build(engine, tags.pause, tags.base, IMAGES_DIR / "pause"))
    if not engine.has_image(tags.operator):
        _timed(
            tags.operator,
            lambda: _build(engine, tags.operator, tags.base, REPO, arg="PYTHON_IMAGE"),
        )
    if not engine.has_image(tags.trainer):
        _timed(tags.trainer, lambda: _build_trainer(engine, tags.trainer, tags.base))
    return tags


class ImageSink(Protocol):
    """Where images go: the e2e node's containerd (``KubeletCluster``)."""

    def has_image(self, ref: str) -> bool: ...

    def import_image(self, stream: IO[bytes], ref: str) -> None: ...

    def prune_images(self, keep: Iterable[str], repositories: Iterable[str]) -> None: ...


def provide_images(sink: ImageSink) -> Images:
    """Make sure ``sink`` holds the pause, operator and trainer images of the current inputs.

    Only what it lacks is built (where Docker's cache lacks it too) and imported; a warm run
    finds everything and starts no Docker engine at all.
    """
    tags = image_tags()
    missing = [ref for ref in (tags.pause, tags.operator, tags.trainer) if not sink.has_image(ref)]
    if not missing:
        return tags
    with docker_engine(cache_root() / "docker") as engine:
        build_images(engine)
        _prune_docker(engine, tags)
        for ref in missing:
            started = time.monotonic()
            docker = shutil.which("docker")
            assert docker is not None
            save = subprocess.Popen(
                [docker, "save", ref],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **engine.env},
            )
            assert save.stdout is not None
            try:
                sink.import_image(save.stdout, ref)
            finally:
                save.stdout.close()
                _, err = save.communicate(timeout=600)
            if save.returncode != 0:
                raise RuntimeError(f"docker save {ref} failed: {err.decode()[-2000:]}")
            log.info("imported %s in %.0f s", ref, time.monotonic() - started)
    # Earlier versions of these images would pile up in the cache with every code change.
    sink.prune_images(tags.all(), REPOSITORIES)
    return tags


# The repositories of the images made here; older tags of them are removed from the caches.
REPOSITORIES = ("ckpt-e2e/debian-python", "ckpt-e2e/pause", "ckpt-operator", "ckpt-e2e/trainer")


def _prune_docker(engine: DockerEngine, tags: Images) -> None:
    listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    for ref in listed:
        repository, _, tag = ref.rpartition(":")
        ours = repository in REPOSITORIES and (
            repository != "ckpt-operator" or tag.startswith("e2e-")
        )
        if ours and ref not in tags.all():
            engine.docker("rmi", ref)


def _timed(what: str, build: Callable[[], None]) -> None:
    started = time.monotonic()
    build()
    log.info("built %s in %.0f s", what, time.monotonic() - started)


def _build(
    engine: DockerEngine,
    tag: str,
    base: str,
    context: Path,
    *,
    arg: str = "BASE",
    dockerfile: Path | None = None,
) -> None:
    args = ["build", "--network=host", "--pull=false", "--tag", tag, "--build-arg", f"{arg}={base}"]
    if dockerfile is not None:
        args += ["--file", str(dockerfile)]
    engine.docker(*args, str(context), timeout=3600)


def _build_trainer(engine: DockerEngine, tag: str, base: str) -> None:
    """The trainer's context: the package, the example and images/trainer/Dockerfile only."""
    with tempfile.TemporaryDirectory(prefix="ckpt-trainer-context-") as tmp:
        context = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, context / name)
        shutil.copytree(
            REPO / "operator",
            context / "operator",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        (context / "examples").mkdir()
        shutil.copy2(REPO / "examples" / "train.py", context / "examples" / "train.py")
        shutil.copy2(IMAGES_DIR / "trainer" / "Dockerfile", context / "Dockerfile")
        _build(engine, tag, base, context)


def _build_base(engine: DockerEngine, tag: str) -> None:
    """debootstrap a minimal Debian with python3, then ``docker import`` it."""
    ensure_commands({"debootstrap": "debootstrap"})
    suite = os_codename()
    mirror = debian_mirror(suite)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckpt-debootstrap-", dir=cache_root()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                suite,
                str(rootfs),
                mirror,
            ],
            timeout=1800,
        )
        # Trust what this machine trusts, also after a later update-ca-certificates.
        bundle = host_ca_bundle().read_bytes()
        (rootfs / "usr/local/share/ca-certificates/host-trust.crt").write_bytes(bundle)
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(bundle)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        docker = shutil.which("docker")
        assert docker is not None
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            # pip uses its own CA list unless told; point it at the system's.
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            'CMD ["python3"]',
        ]
        proc = subprocess.run(
            [docker, "import", *(f"--change={c}" for c in changes), "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            env={**os.environ, **engine.env},
            timeout=900,
        )
        tar.stdout.close()
        tar.wait()
        if proc.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import {tag} failed: {proc.stderr.decode()[-2000:]}")
    log.info("built %s (debootstrap %s) in %.0f s", tag, suite, time.monotonic() - started)


def _run(args: Iterable[str], timeout: float) -> None:
    args = list(args)
    log.info("running %s", " ".join(args))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    begun = time.monotonic()
    with docker_engine(cache_root() / "docker") as running:
        for ref in build_images(running).all():
            print(ref)
    print(f"images ready in {time.monotonic() - begun:.1f} s")
