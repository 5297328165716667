"""The ``kubectl ckpt`` commands: typer wiring over the reports, the cluster and the printers.

Deleting means deleting the Checkpoint *object*; the operator's finalizer deletes the storage
once :func:`ckpt_operator.policy.deletion.blockers` allows it, exactly as for ``kubectl
delete ckpt NAME`` or retention. Verifying means asking the operator (only it sets Ready or
Invalid) with the ``verify.ckpt.dev/requested-at`` annotation and waiting for its answer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, ParamSpec, TypeVar

import typer

from ckpt_operator.api import names
from ckpt_operator.cli.plugin import manifests, render, report
from ckpt_operator.cli.plugin.cluster import Cluster
from ckpt_operator.cli.plugin.output import Format, emit, err, out, table
from ckpt_operator.cli.plugin.targets import TargetError, resolve, select

app = typer.Typer(
    help="Checkpoints of ckpt-operator TrainingRuns: inspect, verify, and delete them safely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
P = ParamSpec("P")
R = TypeVar("R")


def _complete(ctx: typer.Context, incomplete: str, runs: bool) -> list[str]:
    """Names from the cluster for shell completion; nothing when it cannot be reached."""
    try:
        params = ctx.params
        cluster = Cluster(params.get("namespace"), params.get("kubeconfig"), params.get("context"))
        bodies = cluster.runs() if runs else cluster.checkpoints()
    except Exception:
        return []
    return sorted(n for b in bodies if (n := b["metadata"]["name"]).startswith(incomplete))


def complete_checkpoints(ctx: typer.Context, incomplete: str) -> list[str]:
    return _complete(ctx, incomplete, runs=False)


def complete_runs(ctx: typer.Context, incomplete: str) -> list[str]:
    return _complete(ctx, incomplete, runs=True)


Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace.")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]
Output = Annotated[Format, typer.Option("--output", "-o", help="table, json or yaml.")]
Selector = Annotated[str | None, typer.Option("--selector", "-l", help="Label selector.")]
Run = Annotated[str, typer.Argument(help="The TrainingRun.", autocompletion=complete_runs)]
Targets = Annotated[
    list[str] | None,
    typer.Argument(
        help="NAME, RUN/STEP, or a store URI/path (directory or .tar).",
        autocompletion=complete_checkpoints,
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A target or run that does not exist, or a refusal by the API server: one line, exit 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        from kubernetes.client.exceptions import ApiException

        try:
            return command(*args, **kwargs)
        except (TargetError, report.ReportError) as exc:
            raise _fail(str(exc)) from None
        except ApiException as exc:
            raise _fail(f"the API server answered {exc.status} {exc.reason}") from None

    return run


@app.command("list")
@_reports_errors
def list_(
    run: Annotated[
        str | None, typer.Argument(help="Only this run's.", autocompletion=complete_runs)
    ] = None,
    namespace: Namespace = None,
    selector: Selector = None,
    output: Output = Format.table,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Checkpoints with phase, size, age and what would hold their storage back if deleted."""
    cluster = Cluster(namespace, kubeconfig, context)
    snapshot = cluster.snapshot()
    chosen = {c["metadata"]["name"] for c in cluster.checkpoints(selector)} if selector else None
    items = [
        c
        for c in snapshot.checkpoints
        if (run is None or c["spec"]["run"] == run)
        and (chosen is None or c["metadata"]["name"] in chosen)
    ]
    items.sort(key=lambda c: (c["spec"]["run"], c["spec"]["step"], c["spec"]["attempt"]))
    rows = [report.row(snapshot, c) for c in items]
    if not emit(rows, output):
        render.checkpoints(rows, snapshot.now)


@app.command()
@_reports_errors
def describe(
    target: Annotated[
        str,
        typer.Argument(
            help="NAME, RUN/STEP or a store URI/path.", autocompletion=complete_checkpoints
        ),
    ],
    namespace: Namespace = None,
    store: Annotated[
        bool, typer.Option(help="Read the manifest from the store when this machine can.")
    ] = True,
    output: Output = Format.table,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """One checkpoint: files and manifest, verification, resume, retention, deletion blockers.

    The manifest is read from the store where this machine can (file:// here; s3:// with the
    run's Secret if your kubeconfig may read it); otherwise only the status is shown, and the
    Manifest line says which.
    """
    cluster = Cluster(namespace, kubeconfig, context)
    snapshot = cluster.snapshot()
    hits = resolve(target, snapshot.checkpoints, snapshot.runs)
    if len(hits) > 1:
        found = ", ".join(c["metadata"]["name"] for c in hits)
        raise _fail(f"{target} names {len(hits)} checkpoints ({found}): give the NAME")
    body = hits[0]
    manifest, source = (
        manifests.read(cluster, snapshot, body)
        if store
        else (None, f"{manifests.STATUS_ONLY} (--no-store)")
    )
    data = report.describe(snapshot, body, manifest, source)
    if not emit(data, output):
        render.describe(data, snapshot.now)


@app.command()
@_reports_errors
def verify(
    targets: Targets = None,
    namespace: Namespace = None,
    selector: Selector = None,
    wait: Annotated[bool, typer.Option(help="Wait for the operator's answer.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 120.0,
    output: Output = Format.table,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Have the operator verify checkpoints again now; exit 1 unless all come back Ready.

    Only the operator sets Ready or Invalid: this sets verify.ckpt.dev/requested-at on each
    checkpoint, and the operator checks the files against the manifest (its run's verify
    mode), records the outcome and verifiedAt, then removes the annotation.
    """
    if not targets and selector is None:
        raise _fail("give at least one target or --selector")
    cluster = Cluster(namespace, kubeconfig, context)
    checkpoints, runs = cluster.checkpoints(), cluster.runs()
    selected = cluster.checkpoints(selector) if selector else []
    picked = [
        c
        for c in select(targets or [], checkpoints, runs, selected)
        if not c["metadata"].get("deletionTimestamp")
    ]
    if not picked:
        raise _fail("nothing to verify (no match, or all are being deleted)")
    token = datetime.now(UTC).isoformat(timespec="microseconds")
    for c in picked:
        cluster.annotate(c["metadata"]["name"], {names.ANNOTATION_VERIFY_REQUESTED: token})
    answered, waiting = _answers(cluster, picked, timeout if wait else 0.0)
    rows = [
        {"name": name, "answered": name in answered, **report.verification(body)}
        for name, body in sorted({**waiting, **answered}.items())
    ]
    if not emit(rows, output):
        render.verified(rows)
    if wait and any(not r["answered"] or r["phase"] != "Ready" for r in rows):
        raise typer.Exit(1)


def _answers(
    cluster: Cluster, picked: list[report.Body], timeout: float
) -> tuple[dict[str, report.Body], dict[str, report.Body]]:
    """``(answered, still waiting)`` by name: the operator removes a request once it has
    recorded the outcome, so an object without it carries the answer."""
    waiting = {c["metadata"]["name"]: c for c in picked}
    answered: dict[str, report.Body] = {}
    deadline = time.monotonic() + timeout
    while True:
        current = {c["metadata"]["name"]: c for c in cluster.checkpoints()}
        for name in list(waiting):
            body = current.get(name, waiting[name])
            if names.ANNOTATION_VERIFY_REQUESTED not in (body["metadata"].get("annotations") or {}):
                answered[name] = body
                del waiting[name]
        if not waiting or time.monotonic() >= deadline:
            return answered, waiting
        time.sleep(0.2)


@app.command("resume-target")
@_reports_errors
def resume_target(
    run: Run,
    namespace: Namespace = None,
    output: Output = Format.table,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """What the next attempt would resume from, and why each newer checkpoint is skipped.

    The operator's own resume_plan, applied to the run's checkpoints as they are now: the
    target and fallbacks are what CKPT_RESUME_FROM and CKPT_RESUME_CANDIDATES would hold.
    """
    snapshot = Cluster(namespace, kubeconfig, context).snapshot()
    data = report.resume_report(snapshot, run)
    if not emit(data, output):
        render.resume(data)


@app.command()
@_reports_errors
def gc(
    run: Run,
    plan: Annotated[bool, typer.Option("--plan", help="Show the plan (required).")] = False,
    namespace: Namespace = None,
    output: Output = Format.table,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """What retention and the storage finalizer would delete next, and what holds the rest.

    Only --plan: the operator applies retention itself every few seconds, and deletes storage
    only when nothing blocks it.
    """
    if not plan:
        raise _fail("the operator collects garbage itself; use --plan to see what it will do")
    snapshot = Cluster(namespace, kubeconfig, context).snapshot()
    data = report.gc_plan(snapshot, run)
    if not emit(data, output):
        render.gc(data)


@app.command()
@_reports_errors
def delete(
    targets: Targets = None,
    namespace: Namespace = None,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector for bulk deletes.")
    ] = None,
    every: Annotated[
        int | None, typer.Option(min=1, help="Only steps divisible by this (e.g. 2: even).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would go and what blocks it.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Delete even when blocked (sets ckpt.dev/force-delete=true)."),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until unblocked checkpoints are gone.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 60.0,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete checkpoints: the record goes, the storage goes when nothing needs it.

    Targets may be given as NAME, RUN/STEP, a store URI or path of either layout, or selected
    with -l (and --every N for steps divisible by N). --dry-run evaluates the operator's
    deletion policy here and shows what would go and what holds the rest back.
    """
    if not targets and selector is None:
        raise _fail("give at least one target or --selector")
    cluster = Cluster(namespace, kubeconfig, context)
    snapshot = cluster.snapshot()
    selected = cluster.checkpoints(selector) if selector is not None else []
    picked = select(targets or [], snapshot.checkpoints, snapshot.runs, selected, every)
    if not picked:
        err.print("no checkpoints matched")
        return
    grid = table("NAME", "RUN", "STEP", "PATH", "STORAGE")
    pending: list[str] = []
    for c in picked:
        name = c["metadata"]["name"]
        blockers = snapshot.blockers(c, force=force)
        if dry_run:
            verdict = "would be " + ("kept: " + "; ".join(blockers) if blockers else "deleted")
        else:
            verdict = "kept: " + "; ".join(blockers) if blockers else "deleted now"
        grid.add_row(name, c["spec"]["run"], str(c["spec"]["step"]), c["spec"]["path"], verdict)
        if dry_run:
            continue
        if force:
            cluster.annotate(name, {names.ANNOTATION_FORCE_DELETE: "true"})
        if cluster.delete(name) and not blockers:
            pending.append(name)
    out.print(grid)
    if dry_run:
        out.print(f"(dry run) {len(picked)} checkpoint(s) selected in {cluster.namespace}")
        return
    deadline = time.monotonic() + (timeout if wait else 0)
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if cluster.get(n) is not None]
        if pending:
            time.sleep(0.2)
    if wait and pending:
        raise _fail(f"still present after {timeout:.0f} s: {', '.join(pending)}")
    out.print(f"{len(picked)} checkpoint(s) marked for deletion in {cluster.namespace}")
