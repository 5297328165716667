"""``kubectl ckpt`` against the real API server and the operator's finalizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ckpt_operator.api import names
from ckpt_operator.cli.plugin import app
from ckpt_operator.storage import layout
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = pytest.mark.integration


def test_plugin_deletes_by_name_run_step_uri_path_and_selector(
    k8s: Any,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    root = tmp_path / "allowed"
    start_operator(namespace, allowed_roots=(f"file://{root}",))
    c = Cluster(k8s, namespace)
    run = c.create_run(run_body("plug", f"file://{root}/plug"))
    store = Store.from_uri(f"file://{root}/plug")
    fmts: dict[int, names.Format] = {1: "dir", 2: "tar", 3: "dir", 4: "tar", 5: "dir"}
    paths = {s: root / "plug" / write_checkpoint(store, "plug", s, fmt=f) for s, f in fmts.items()}
    ckpts = {s: c.register(run, s, fmt=f) for s, f in fmts.items()}
    for name in ckpts.values():
        c.wait_checkpoint(name, "Ready")

    def cli(*args: str) -> Any:
        result = CliRunner().invoke(
            app, [*args, "-n", namespace, "--kubeconfig", str(kubeconfig)], catch_exceptions=False
        )
        return result

    # Dry run: shows what would go and what holds the rest back; deletes nothing.
    dry = cli("delete", "-l", f"{names.LABEL_RUN}=plug", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would be kept: newest Ready checkpoint of plug" in dry.output
    assert dry.output.count("would be deleted") == 4
    assert c.checkpoint_names() == set(ckpts.values())

    # Delete 2 (RUN/STEP, a tar) and 4 (its filesystem path, a tar).
    done = cli("delete", "plug/2", str(paths[4]))
    assert done.exit_code == 0, done.output
    assert c.checkpoint_names() == {ckpts[1], ckpts[3], ckpts[5]}
    assert not paths[2].exists() and not paths[4].exists()
    assert all(paths[s].exists() for s in (1, 3, 5))
    listed = cli("list", "plug")
    assert listed.exit_code == 0
    for s in (1, 3, 5):
        assert ckpts[s] in listed.output
    assert ckpts[2] not in listed.output and ckpts[4] not in listed.output

    # A bulk delete by selector: 1 and 3 go; the newest Ready (5) stays unless forced.
    bulk = cli("delete", "-l", f"{names.LABEL_RUN}=plug")
    assert bulk.exit_code == 0, bulk.output
    assert "kept: newest Ready checkpoint of plug" in bulk.output
    wait_for(lambda: c.checkpoint_names() == {ckpts[5]}, 10, "1 and 3 to go")
    assert paths[5].exists() and not paths[1].exists() and not paths[3].exists()
    body = wait_for(
        lambda: (c.checkpoint(ckpts[5]) or {}).get("status", {}).get("blockedBy"), 10, "5"
    )
    assert body == ["newest Ready checkpoint of plug"]

    forced = cli("delete", f"file://{root}/plug/{paths[5].name}", "--force")
    assert forced.exit_code == 0, forced.output
    assert not c.checkpoint_names() and not paths[5].exists()

    missing = cli("delete", "plug/99")
    assert missing.exit_code == 1 and "no checkpoint at step 99" in missing.output


def test_plugin_every_even_step(
    k8s: Any,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    root = tmp_path / "allowed"
    start_operator(namespace, allowed_roots=(f"file://{root}",))
    c = Cluster(k8s, namespace)
    run = c.create_run(run_body("even", f"file://{root}/even"))
    store = Store.from_uri(f"file://{root}/even")
    ckpts = {}
    for s in range(1, 8):
        write_checkpoint(store, "even", s)
        ckpts[s] = c.register(run, s)
    for name in ckpts.values():
        c.wait_checkpoint(name, "Ready")
    args = ["delete", "-l", f"{names.LABEL_RUN}=even", "--every", "2", "-n", namespace]
    result = CliRunner().invoke(app, [*args, "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 0, result.output
    assert c.checkpoint_names() == {ckpts[s] for s in (1, 3, 5, 7)}
    assert sorted(p.name for p in (root / "even").iterdir()) == [
        layout.CheckpointName(s, 0, "dir").path for s in (1, 3, 5, 7)
    ]
