"""``kubectl ckpt`` against the real API server and the operator's finalizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ckpt_operator.api import names
from ckpt_operator.cli.plugin import app
from ckpt_operator.storage import layout
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, env_of, run_body
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


def _cli(kubeconfig: Path, namespace: str) -> Callable[..., Any]:
    def cli(*args: str) -> Any:
        return CliRunner().invoke(
            app, [*args, "-n", namespace, "--kubeconfig", str(kubeconfig)], catch_exceptions=False
        )

    return cli


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_plugin_verify_asks_the_operator_and_reports_its_answer(
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
    run = c.create_run(run_body("ver", f"file://{root}/ver"))
    paths = {s: root / "ver" / write_checkpoint(root / "ver", "ver", s) for s in (1, 2)}
    ckpts = {s: c.register(run, s) for s in (1, 2)}
    for name in ckpts.values():
        c.wait_checkpoint(name, "Ready")
    cli = _cli(kubeconfig, namespace)

    model = paths[2] / "model.bin"
    model.write_bytes(b"X" + model.read_bytes()[1:])  # same size: only the checksum tells
    corrupted = cli("verify", "ver/2")
    assert corrupted.exit_code == 1, corrupted.output
    assert "Invalid" in corrupted.output and "checksum mismatch" in corrupted.output
    assert c.checkpoint_phase(ckpts[2]) == "Invalid"

    answers = _json(cli("verify", "-l", f"{names.LABEL_RUN}=ver", "-o", "json", "--no-wait"))
    assert {a["name"] for a in answers} == set(ckpts.values())
    wait_for(
        lambda: all(
            names.ANNOTATION_VERIFY_REQUESTED
            not in (c.checkpoint(n) or {})["metadata"].get("annotations", {})
            for n in ckpts.values()
        ),
        20,
        "both requests answered",
    )
    done = cli("verify", ckpts[1], "-o", "yaml")
    assert done.exit_code == 0, done.output
    intact = yaml.safe_load(done.output)
    assert intact == [
        {
            "name": ckpts[1],
            "answered": True,
            "phase": "Ready",
            "verifiedAt": intact[0]["verifiedAt"],
            "message": "full verification passed",
        }
    ]


def test_plugin_explains_resume_gc_and_describe_as_the_operator_then_acts(
    k8s: Any,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    root = tmp_path / "allowed"
    operator = start_operator(namespace, allowed_roots=(f"file://{root}",))
    c = Cluster(k8s, namespace)
    run = c.create_run(run_body("ex", f"file://{root}/ex"))
    store = root / "ex"
    ckpts = {}
    for s in range(1, 7):
        write_checkpoint(store, "ex", s, fmt="tar" if s == 3 else "dir", metrics={"loss": 1 / s})
        ckpts[s] = c.register(run, s, fmt="tar" if s == 3 else "dir")
    (store / "step-0000000006.attempt-0" / "MANIFEST.json").unlink()  # never committed
    write_checkpoint(store, "ex", 7, kind="weights")
    weights = c.register(run, 7, kind="weights")
    c.consumer("server", "ex", loaded=2)
    for s, name in ckpts.items():
        c.wait_checkpoint(name, "Invalid" if s == 6 else "Ready")
    c.wait_checkpoint(weights, "Ready")
    cli = _cli(kubeconfig, namespace)

    # resume-target: the newest usable, and why each newer one is skipped ...
    plan = _json(cli("resume-target", "ex", "-o", "json"))
    assert plan["target"]["name"] == ckpts[5]
    verdicts = {r["name"]: (r["verdict"], r.get("reason", "")) for r in plan["checkpoints"]}
    assert verdicts[weights][1].startswith("weights-only export")
    assert (
        verdicts[ckpts[6]][0] == "skipped" and "MANIFEST.json is missing" in verdicts[ckpts[6]][1]
    )
    assert verdicts[ckpts[5]] == ("target", "")
    assert verdicts[ckpts[1]] == ("fallback", "")
    # ... is what the operator gives the next attempt.
    c.wait_pod("ex", 0)
    c.run_pod("ex", 0)
    c.fail_pod("ex", 0)
    env = env_of(c.wait_pod("ex", 1))
    assert env[names.ENV_RESUME_FROM] == plan["next"][names.ENV_RESUME_FROM]
    assert json.loads(env[names.ENV_RESUME_CANDIDATES]) == plan["next"][names.ENV_RESUME_CANDIDATES]

    # describe: the manifest from the store here, verification, resume, what blocks deletion.
    described = _json(cli("describe", "ex/3", "-o", "json"))
    assert described["manifest"]["source"].startswith(f"store file://{store}/")
    assert {f["path"] for f in described["manifest"]["files"]} == {"model.bin", "meta.json"}
    assert described["verification"]["phase"] == "Ready"
    assert described["resume"] == {"verdict": "fallback", "rank": 2}
    assert described["deletion"]["blockedBy"] == ["consumer server has loaded step 2, needs > 3"]
    broken = _json(cli("describe", ckpts[6], "-o", "json", "--no-store"))
    assert broken["manifest"] == {"source": "status only (--no-store)"}
    missing = _json(cli("describe", ckpts[6], "-o", "json"))
    assert missing["manifest"]["source"].startswith("status only (")
    human = cli("describe", ckpts[4])
    assert human.exit_code == 0 and "Blocked by:" in human.output and "model.bin" in human.output

    # gc --plan with the operator down, then the operator does exactly that.
    operator.stop()
    c.custom.patch_namespaced_custom_object(
        names.GROUP,
        names.VERSION,
        namespace,
        names.TRAINING_RUNS,
        "ex",
        {"spec": {"retention": {"keepLast": 1}}},
    )
    gc = _json(cli("gc", "--plan", "ex", "-o", "json"))
    actions = {r["name"]: (r["action"], r["blockedBy"]) for r in gc["checkpoints"]}
    held = "consumer server has loaded step 2, needs > {}"
    assert actions == {
        ckpts[1]: ("delete", []),
        ckpts[2]: ("held", [held.format(2)]),
        ckpts[3]: ("held", [held.format(3)]),
        ckpts[4]: ("held", [held.format(4)]),
        ckpts[5]: ("keep", []),
        ckpts[6]: ("keep", []),
        weights: ("keep", []),
    }
    assert gc["summary"] == {
        "delete": 1,
        "held": 3,
        "keep": 3,
        "bytesFreed": gc["checkpoints"][0]["sizeBytes"],
    }
    assert cli("gc", "ex").exit_code == 1  # only --plan
    start_operator(namespace, allowed_roots=(f"file://{root}",))
    wait_for(lambda: ckpts[1] not in c.checkpoint_names(), 20, "step 1 deleted")
    for s in (2, 3, 4):
        c.wait_checkpoint(ckpts[s], "Deleting")
        wait_for(
            lambda s=s: (
                (c.checkpoint(ckpts[s]) or {})["status"].get("blockedBy") == [held.format(s)]
            ),
            20,
            f"step {s} held by the consumer",
        )
    assert {ckpts[5], ckpts[6], weights} <= c.checkpoint_names()
    listed = _json(cli("list", "ex", "-o", "json"))
    assert {r["name"]: r["phase"] for r in listed}[ckpts[2]] == "Deleting"


def test_completion_offers_names_from_the_cluster(
    k8s: Any, kubeconfig: Path, namespace: str
) -> None:
    import click
    import typer

    from ckpt_operator.cli.plugin import commands

    c = Cluster(k8s, namespace)
    c.create_run(run_body("alpha", "file:///data/alpha"))
    c.register("alpha", 1)
    ctx = typer.Context(click.Command("describe"))
    ctx.params = {"namespace": namespace, "kubeconfig": str(kubeconfig)}
    assert commands.complete_checkpoints(ctx, "alp") == ["alpha-step-1-a0"]
    assert commands.complete_runs(ctx, "") == ["alpha"]
    assert commands.complete_runs(ctx, "beta") == []


def _kubeconfig_of(k8s: Any, admin: Path, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a bound token)."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = client.CoreV1Api(k8s).create_namespaced_service_account_token(
        account, namespace, request
    )
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": account, "user": {"token": token.status.token}}]
    config["contexts"][0]["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    return path


def test_describe_reads_s3_manifests_only_with_the_users_own_access(
    k8s: Any, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    import base64

    from kubernetes import client

    from ckpt_operator.testing.s3 import moto_s3

    c = Cluster(k8s, namespace)
    with moto_s3() as s3:
        secret = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "AWS_REGION": "us-east-1",
        }
        c.core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="s3-creds"),
                data={k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
            ),
        )
        uri = s3.uri(f"{namespace}/run")
        run = c.create_run(run_body("s3d", uri, secret="s3-creds"))
        store = Store.from_uri(uri, storage_options=s3.storage_options)
        write_checkpoint(store, "s3d", 1, fmt="tar")
        c.register(run, 1, fmt="tar")

        admin = _json(_cli(kubeconfig, namespace)("describe", "s3d/1", "-o", "json"))
        assert (
            admin["manifest"]["source"] == f"store {uri}/{layout.CheckpointName(1, 0, 'tar').path}"
        )
        assert {f["path"] for f in admin["manifest"]["files"]} == {"model.bin", "meta.json"}

        # A user who may read checkpoints, runs and pods, but not Secrets: the status only.
        rbac = client.RbacAuthorizationV1Api(k8s)
        c.core.create_namespaced_service_account(namespace, {"metadata": {"name": "viewer"}})
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "viewer"},
                "rules": [
                    {"apiGroups": ["ckpt.dev"], "resources": ["*"], "verbs": ["get", "list"]},
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "viewer"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "viewer",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": namespace}],
            },
        )
        viewer = _kubeconfig_of(k8s, kubeconfig, namespace, "viewer", tmp_path / "viewer")
        describe = _cli(viewer, namespace)
        seen = wait_for(  # the authorizer learns of the new binding in a moment
            lambda: (r := describe("describe", "s3d/1", "-o", "json")).exit_code == 0 and r,
            15,
            "the viewer to be allowed",
        )
        assert _json(seen)["manifest"] == {
            "source": "status only (Secret s3-creds is missing, or your kubeconfig may not read it)"
        }
