"""Fixtures shared by the chart's tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from ckpt_operator.testing.binaries import ensure_binaries

Helm = Callable[..., subprocess.CompletedProcess[str]]

CRD_DELETION_TIMEOUT_S = 280
"""The API server's CRD finalizer sometimes finds a CRD's storage re-initializing as it deletes
it ("storage is (re)initializing") and retries only after its minute-long poll: one CRD can
take over a minute to go, and it handles CRDs one at a time (seen rarely, in CI and here)."""


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run the cached helm binary with a private HOME; raises with stderr on failure."""
    binary = ensure_binaries(["helm"])["helm"]
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Longer than any --timeout a test gives helm, so helm reports what it waited for.
        proc = subprocess.run(
            [str(binary), *args], env=env, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run
