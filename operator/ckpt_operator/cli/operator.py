"""The ``ckpt-operator`` command: run the operator, generate CRDs, a local dev control plane."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ckpt_operator.api import generated

app = typer.Typer(
    help="ckpt-operator: resume training from the newest valid checkpoint; delete storage safely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dev = typer.Typer(help="A local control plane (etcd + kube-apiserver) for development.")
app.add_typer(dev, name="dev")
console = Console(stderr=True)


def _split_env(name: str) -> list[str]:
    return [item for item in os.environ.get(name, "").split(",") if item]


@app.command()
def run(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only these namespaces.")
    ] = None,
    allowed_root: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-root",
            help="Store URI prefix runs may use (repeatable). Env: CKPT_ALLOWED_ROOTS, a,b,c.",
        ),
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port; 0 disables.")] = 8000,
    liveness: Annotated[
        str, typer.Option(help="Liveness endpoint URL; empty disables.")
    ] = "http://0.0.0.0:8080/healthz",
    peering: Annotated[
        str | None, typer.Option(help="KopfPeering name for hot-standby replicas.")
    ] = None,
    scan_interval: Annotated[
        float,
        typer.Option(envvar="CKPT_SCAN_INTERVAL_S", help="Seconds between store scans per run."),
    ] = 30.0,
    sweep_grace: Annotated[
        float,
        typer.Option(
            envvar="CKPT_SWEEP_GRACE_S", help="Age (s) before uncommitted leftovers are swept."
        ),
    ] = 3600.0,
    sweep_dry_run: Annotated[
        bool,
        typer.Option(envvar="CKPT_SWEEP_DRY_RUN", help="Only report what the sweep would remove."),
    ] = False,
    webhook_port: Annotated[
        int,
        typer.Option(
            envvar="CKPT_WEBHOOK_PORT",
            help="Serve the admission webhook of attached runs on this port; 0 disables.",
        ),
    ] = 0,
    webhook_addr: Annotated[str, typer.Option(help="Address the webhook listens on.")] = "0.0.0.0",  # noqa: S104
    webhook_cert: Annotated[
        Path | None,
        typer.Option(help="TLS certificate (PEM); without it and --webhook-key: self-signed."),
    ] = None,
    webhook_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    webhook_configuration: Annotated[
        str | None,
        typer.Option(
            help="Create and update this MutatingWebhookConfiguration to point at this server "
            "(local use; the Helm chart ships its own)."
        ),
    ] = None,
    webhook_host: Annotated[
        str | None, typer.Option(help="Host the API server reaches the webhook at.")
    ] = None,
    webhook_failure_policy: Annotated[
        str, typer.Option(help="failurePolicy of --webhook-configuration: Ignore or Fail.")
    ] = "Ignore",
    webhook_timeout: Annotated[
        int, typer.Option(help="timeoutSeconds of --webhook-configuration (1-30).")
    ] = 5,
) -> None:
    """Run the operator against the cluster in KUBECONFIG or the in-cluster service account."""
    from ckpt_operator.config import OperatorConfig, WebhookConfig
    from ckpt_operator.handlers import startup

    webhook = None
    if webhook_port:
        if (webhook_cert is None) != (webhook_key is None):
            raise typer.BadParameter("give both --webhook-cert and --webhook-key, or neither")
        if webhook_failure_policy not in ("Ignore", "Fail"):
            raise typer.BadParameter("--webhook-failure-policy is Ignore or Fail")
        if not 1 <= webhook_timeout <= 30:
            raise typer.BadParameter("--webhook-timeout is 1 to 30 seconds")
        webhook = WebhookConfig(
            port=webhook_port,
            addr=webhook_addr,
            host=webhook_host,
            certfile=str(webhook_cert) if webhook_cert else None,
            keyfile=str(webhook_key) if webhook_key else None,
            configuration=webhook_configuration,
            failure_policy="Fail" if webhook_failure_policy == "Fail" else "Ignore",
            timeout_s=webhook_timeout,
        )
    config = OperatorConfig(
        allowed_roots=tuple(allowed_root or _split_env("CKPT_ALLOWED_ROOTS")),
        metrics_port=metrics_port or None,
        namespaces=tuple(namespace or ()),
        scan_interval_s=scan_interval,
        sweep_grace_s=sweep_grace,
        sweep_dry_run=sweep_dry_run,
        webhook=webhook,
    )
    startup.run(config, liveness_endpoint=liveness or None, peering=peering)


@app.command()
def crds(
    check: Annotated[bool, typer.Option(help="Fail if a committed file differs.")] = False,
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
) -> None:
    """Write what the models generate: crds/, the chart's CRD templates and values schema, and
    docs/crd-reference.md."""
    if check:
        stale = generated.stale(repo)
        if stale:
            console.print(f"[red]out of date:[/red] {', '.join(map(str, stale))}")
            console.print("run: ckpt-operator crds")
            raise typer.Exit(1)
        console.print("generated files up to date")
        return
    for path in generated.write(repo):
        console.print(f"wrote {path}")


@dev.command("up")
def dev_up(
    directory: Annotated[Path | None, typer.Option("--dir", help="State directory.")] = None,
    kwok: Annotated[bool, typer.Option(help="Also run kwok (fake nodes).")] = False,
) -> None:
    """Start etcd, kube-apiserver and the garbage collector in the background, CRDs installed."""
    from ckpt_operator.testing import devserver

    state = devserver.start(directory or devserver.default_dir(), kwok=kwok)
    console.print(f"control plane up at {state.server}; stop it with: ckpt-operator dev down")
    typer.echo(f"export KUBECONFIG={state.kubeconfig}")


@dev.command("down")
def dev_down(
    directory: Annotated[Path | None, typer.Option("--dir", help="State directory.")] = None,
) -> None:
    """Stop the control plane started by ``dev up``."""
    from ckpt_operator.testing import devserver

    if devserver.stop(directory or devserver.default_dir()):
        console.print("control plane stopped")
    else:
        console.print("no control plane was running")


@app.command()
def demo() -> None:
    """Local control plane + operator + examples/, then `kubectl get tr,ckpt`; stops everything."""
    from ckpt_operator.cli import demo as demo_module

    raise typer.Exit(demo_module.main())
