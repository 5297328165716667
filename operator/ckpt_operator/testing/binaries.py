"""Find or build the Kubernetes binaries the local control plane and the e2e node run.

No registry serves prebuilt Kubernetes binaries, so they are built from Go modules with the
machine's Go toolchain. ``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod replaces
the staging modules (``k8s.io/api`` …) with local paths. A generated wrapper module requires it
and replaces each staging module with the matching ``v0.X.Y`` tag instead. Binaries are cached
per version, so only the first run pays for the build.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "1.34.4"
# Tools whose own modules `go install` cleanly, at pinned versions.
GO_INSTALLABLE = {
    "kwok": "sigs.k8s.io/kwok/cmd/kwok@v0.7.0",
    "helm": "helm.sh/helm/v3/cmd/helm@v3.22.0",
    "kind": "sigs.k8s.io/kind@v0.33.0",
}
# Directories of binaries from one module, installed together (a name like `bridge` or
# `loopback` alone would be ambiguous on PATH, so only the cache is searched for these).
GO_INSTALLABLE_DIRS = {
    # The CNI plugins the e2e node's bridge network uses.
    "cni-plugins": (
        "cni/bin",
        "github.com/containernetworking/plugins",
        "v1.7.1",
        (
            "plugins/main/bridge",
            "plugins/main/loopback",
            "plugins/ipam/host-local",
            "plugins/meta/portmap",
        ),
    ),
}

# Controllers built from their own modules through a wrapper module that requires them:
# ``go install module@version`` also asks the module proxy for the module's version list (its
# deprecation check), which not every proxy or mirror serves. Their CRDs come from the same
# module source and are cached beside the binary (``<name>-crds/``).
GO_MODULES = {"jobset-controller": ("sigs.k8s.io/jobset", "v0.10.1", "config/components/crd/bases")}

_KUBE_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    # The e2e tier's node: a real kubelet (CRI: containerd), scheduler and service proxy.
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    # etcd's server module is already in the kubernetes module graph at the tested version.
    "etcd": "go.etcd.io/etcd/server/v3",
}
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kwok")
NODE = ("kubelet", "kube-scheduler", "kube-proxy", "cni-plugins")
ALL_BINARIES = (*_KUBE_PACKAGES, *GO_INSTALLABLE, *GO_INSTALLABLE_DIRS, *GO_MODULES)


class BinaryBuildError(RuntimeError):
    """A control-plane binary could neither be found nor built."""


def cache_dir(version: str = KUBERNETES_VERSION) -> Path:
    """Per-version binary cache, ``$CKPT_OPERATOR_CACHE`` or the XDG cache directory."""
    root = os.environ.get("CKPT_OPERATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ckpt-operator"
    )
    return Path(root) / "k8s" / f"v{version}"


def _candidates(name: str, version: str) -> Iterator[Path]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        yield Path(assets) / name
    on_path = shutil.which(name)
    if on_path:
        yield Path(on_path)
    yield cache_dir(version) / name


def find_binary(name: str, version: str = KUBERNETES_VERSION) -> Path | None:
    """The first executable named ``name`` in KUBEBUILDER_ASSETS, PATH or the cache.

    For a directory group (``cni-plugins``): its cached directory once every binary is in it.
    """
    if name in GO_INSTALLABLE_DIRS:
        subdir, _, _, packages = GO_INSTALLABLE_DIRS[name]
        directory = cache_dir(version) / subdir
        complete = all((directory / pkg.rsplit("/", 1)[1]).is_file() for pkg in packages)
        return directory if complete else None
    for path in _candidates(name, version):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def ensure_binaries(
    names: Iterable[str] = CONTROL_PLANE, version: str = KUBERNETES_VERSION
) -> dict[str, Path]:
    """Return a path for every binary in ``names``, building the missing ones (cached)."""
    names = list(names)
    unknown = set(names) - set(ALL_BINARIES)
    if unknown:
        raise ValueError(f"unknown binaries {sorted(unknown)}; known: {list(ALL_BINARIES)}")
    found = {name: find_binary(name, version) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        with _build_lock(cache_dir(version)):
            # Another process may have built them while we waited for the lock.
            missing = [name for name in missing if find_binary(name, version) is None]
            if missing:
                _build(missing, version)
        found = {name: find_binary(name, version) for name in names}
    result: dict[str, Path] = {}
    for name, path in found.items():
        if path is None:
            raise BinaryBuildError(f"{name}: built but not found in {cache_dir(version)}")
        result[name] = path
    return result


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinaryBuildError(
            "the Go toolchain is needed to build kube-apiserver/etcd (none on PATH); install Go, "
            "or point KUBEBUILDER_ASSETS at a directory holding the binaries"
        )
    return go


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    log.info("running %s", " ".join(args))
    proc = subprocess.run(
        args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BinaryBuildError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _build(names: list[str], version: str) -> None:
    out = cache_dir(version)
    started = time.monotonic()
    kube = [name for name in names if name in _KUBE_PACKAGES]
    if kube:
        _build_kube(kube, version, out)
    for name in names:
        if name in GO_MODULES:
            _build_module(name, version)
        if name in GO_INSTALLABLE:
            _run(
                [_go(), "install", "-trimpath", GO_INSTALLABLE[name]],
                cwd=out,
                env={"GOBIN": str(out), "CGO_ENABLED": "0"},
            )
        elif name in GO_INSTALLABLE_DIRS:
            subdir, module, module_version, packages = GO_INSTALLABLE_DIRS[name]
            _run(
                [
                    _go(),
                    "install",
                    "-trimpath",
                    *(f"{module}/{pkg}@{module_version}" for pkg in packages),
                ],
                cwd=out,
                env={"GOBIN": str(out / subdir), "CGO_ENABLED": "0"},
            )
    log.info("built %s in %.0f s into %s", names, time.monotonic() - started, out)


def crd_dir(name: str, version: str = KUBERNETES_VERSION) -> Path:
    """Where the CRDs of a controller in ``GO_MODULES`` are cached (after ``ensure_binaries``)."""
    return cache_dir(version) / f"{name}-crds"


def _build_module(name: str, version: str) -> None:
    module, tag, crds = GO_MODULES[name]
    out = cache_dir(version)
    work = out / f"{name}-build"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module ckpt-operator.local/{name}\n\ngo 1.24\n\nrequire {module} {tag}\n"
    )
    (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{module}"\n')
    _run([_go(), "mod", "tidy"], cwd=work)
    _run(
        [_go(), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / name), module],
        cwd=work,
        env={"CGO_ENABLED": "0"},
    )
    source = Path(
        json.loads(_run([_go(), "mod", "download", "-json", f"{module}@{tag}"], cwd=work))["Dir"]
    )
    target = crd_dir(name, version)
    target.mkdir(parents=True, exist_ok=True)
    for crd in sorted((source / crds).glob("*.yaml")):
        (target / crd.name).write_bytes(crd.read_bytes())


def _staging_modules(version: str, workdir: Path) -> list[str]:
    """The ``k8s.io/*`` modules kubernetes' go.mod replaces with ./staging paths."""
    info = json.loads(
        _run([_go(), "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"], cwd=workdir)
    )
    gomod = Path(info["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, re.M)))


def _build_kube(names: list[str], version: str, out: Path) -> None:
    work = out / "wrapper"
    work.mkdir(parents=True, exist_ok=True)
    staging = _staging_modules(version, work)
    minor_tag = "v0." + version.split(".", 1)[1]
    replaces = "\n".join(f"\t{mod} => {mod} {minor_tag}" for mod in staging)
    (work / "go.mod").write_text(
        f"module ckpt-operator.local/k8sbuild\n\ngo 1.24\n\n"
        f"require k8s.io/kubernetes v{version}\n\nreplace (\n{replaces}\n)\n"
    )
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in _KUBE_PACKAGES.values())
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    _run([_go(), "mod", "tidy"], cwd=work)
    major, minor, _ = version.split(".")
    ldflags = [
        f"-X 'k8s.io/{pkg}.{key}={val}'"
        for pkg in ("component-base/version", "client-go/pkg/version")
        for key, val in {
            "gitVersion": f"v{version}",
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
            "buildDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }.items()
    ]
    for name in names:
        _run(
            [
                _go(),
                "build",
                "-trimpath",
                "-ldflags",
                " ".join(["-s", "-w", *ldflags]),
                "-o",
                str(out / name),
                _KUBE_PACKAGES[name],
            ],
            cwd=work,
            env={"CGO_ENABLED": "0"},
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    for binary, location in ensure_binaries([*CONTROL_PLANE, "helm", *sys.argv[1:]]).items():
        print(f"{binary:<24} {location}")
    print(f"control-plane binaries ready in {time.monotonic() - started:.1f} s")
