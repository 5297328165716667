"""``kubectl ckpt``: list checkpoints and delete them safely, one by one or in bulk.

Deleting means deleting the Checkpoint *object*; the operator's finalizer deletes the storage
once :func:`ckpt_operator.policy.deletion.deletion_blockers` allows it, exactly as for ``kubectl
delete ckpt NAME`` or retention. ``--dry-run`` evaluates that same function here and shows
what would go and what holds the rest back; ``--force`` sets ``ckpt.dev/force-delete`` first.

Targets may be given as a Checkpoint name, ``RUN/STEP``, a store URI or path of either layout
(``…/step-0000000002.attempt-0`` or ``….tar``), or selected with ``-l`` (and ``--every N``
for steps divisible by N, e.g. every even step).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ckpt_operator.api import names
from ckpt_operator.policy.consumers import consumers_of
from ckpt_operator.policy.deletion import deletion_blockers
from ckpt_operator.storage import layout
from ckpt_operator.views.checkpoint import CheckpointInfo
from ckpt_operator.views.pod import ConsumerView
from ckpt_operator.views.run import RunView

app = typer.Typer(
    help="Checkpoints of ckpt-operator TrainingRuns: list, and delete safely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Body = dict[str, Any]


class Cluster:
    """The reads and writes the plugin needs, on the synchronous ``kubernetes`` client."""

    def __init__(self, namespace: str | None, kubeconfig: str | None, context: str | None):
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            default_ns = (active or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, TypeError, FileNotFoundError):
            config.load_incluster_config()
            default_ns = "default"
        self.namespace = namespace or default_ns
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    def _list(self, plural: str, selector: str | None = None) -> list[Body]:
        found: Any = self.custom.list_namespaced_custom_object(
            names.GROUP, names.VERSION, self.namespace, plural, label_selector=selector or ""
        )
        items: list[Body] = found.get("items", [])
        return items

    def checkpoints(self, selector: str | None = None) -> list[Body]:
        return self._list(names.CHECKPOINTS, selector)

    def runs(self) -> list[Body]:
        return self._list(names.TRAINING_RUNS)

    def pods(self) -> list[Body]:
        from kubernetes import client

        pods = self.core.list_namespaced_pod(self.namespace)
        sanitized: list[Body] = client.ApiClient().sanitize_for_serialization(pods)["items"]
        return sanitized

    def force(self, name: str) -> None:
        patch = {"metadata": {"annotations": {names.ANNOTATION_FORCE_DELETE: "true"}}}
        self.custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name, patch
        )

    def delete(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get(self, name: str) -> Body | None:
        from kubernetes.client.exceptions import ApiException

        try:
            body: Any = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, names.CHECKPOINTS, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)


class TargetError(ValueError):
    """A target names no checkpoint, or more than one where one was meant."""


def _norm_root(uri: str) -> str:
    return uri.rstrip("/")


def _split_location(target: str) -> tuple[str | None, str]:
    """``(store root URI or None, entry name)`` of a URI or path naming a checkpoint."""
    text = target.rstrip("/")
    if "://" in text or text.startswith("/"):
        uri = text if "://" in text else f"file://{text}"
        parent, _, base = uri.rpartition("/")
        return _norm_root(parent), base
    if "/" in text:  # a relative path on this machine
        return _split_location(os.path.abspath(text))
    return None, text


def resolve(target: str, checkpoints: Sequence[Body], runs: Sequence[Body]) -> list[Body]:
    """The checkpoints one command-line target names (see the module docstring)."""
    by_name = [c for c in checkpoints if c["metadata"]["name"] == target]
    if by_name:
        return by_name
    run_name, sep, step = target.partition("/")
    if sep and step.isdigit() and "/" not in step and "://" not in target:
        hits = [
            c
            for c in checkpoints
            if c["spec"]["run"] == run_name and c["spec"]["step"] == int(step)
        ]
        if hits:
            return hits
        raise TargetError(f"{target}: run {run_name} has no checkpoint at step {step}")
    root, entry = _split_location(target)
    if layout.parse_committed(entry) is None:
        raise TargetError(
            f"{target}: not a checkpoint name, RUN/STEP, or a store URI/path of a checkpoint"
        )
    roots = {
        r["metadata"]["name"]: _norm_root(r["spec"]["store"]["uri"])
        for r in runs
        if (r.get("spec") or {}).get("store")
    }
    hits = [
        c
        for c in checkpoints
        if c["spec"]["path"].rstrip("/") == entry
        and (root is None or roots.get(c["spec"]["run"]) == root)
    ]
    if not hits:
        raise TargetError(f"{target}: no Checkpoint records that location")
    if root is None and len({c["spec"]["run"] for c in hits}) > 1:
        raise TargetError(f"{target}: several runs have {entry}; give the full URI or RUN/STEP")
    return hits


def blockers_for(
    target: Body,
    checkpoints: Sequence[Body],
    runs: Sequence[Body],
    pods: Sequence[Body],
    force: bool,
) -> list[str]:
    """What would hold ``target``'s storage back now (as the operator would decide)."""
    if force:
        return []
    info = CheckpointInfo.from_body(target)
    run_body = next((r for r in runs if r["metadata"]["name"] == info.run), None)
    run = RunView.from_body(run_body) if run_body else None
    siblings = [CheckpointInfo.from_body(c) for c in checkpoints if c["spec"]["run"] == info.run]
    found = consumers_of(
        info.run, run.selector if run else None, [ConsumerView.from_body(p) for p in pods]
    )
    return deletion_blockers(
        info, run=run, siblings=siblings, consumers=found, now=datetime.now(UTC)
    )


def _select(
    cluster: Cluster, targets: Iterable[str], selector: str | None, every: int | None
) -> tuple[list[Body], list[Body], list[Body]]:
    checkpoints = cluster.checkpoints()
    runs = cluster.runs()
    chosen: dict[str, Body] = {}
    for target in targets:
        for c in resolve(target, checkpoints, runs):
            chosen[c["metadata"]["name"]] = c
    if selector is not None:
        for c in cluster.checkpoints(selector):
            chosen[c["metadata"]["name"]] = c
    picked = sorted(chosen.values(), key=lambda c: (c["spec"]["run"], c["spec"]["step"]))
    if every:
        picked = [c for c in picked if c["spec"]["step"] % every == 0]
    return picked, checkpoints, runs


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace.")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]


@app.command()
def delete(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="NAME, RUN/STEP, or a store URI/path (directory or .tar)."),
    ] = None,
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
    """Delete checkpoints: the record goes, the storage goes when nothing needs it."""
    if not targets and selector is None:
        raise _fail("give at least one target or --selector")
    cluster = Cluster(namespace, kubeconfig, context)
    try:
        picked, checkpoints, runs = _select(cluster, targets or [], selector, every)
    except TargetError as exc:
        raise _fail(str(exc)) from None
    if not picked:
        err.print("no checkpoints matched")
        return
    pods = cluster.pods()
    table = Table("NAME", "RUN", "STEP", "PATH", "STORAGE")
    pending: list[str] = []
    for c in picked:
        name = c["metadata"]["name"]
        blockers = blockers_for(c, checkpoints, runs, pods, force)
        verdict = "deleted now" if not blockers else "kept: " + "; ".join(blockers)
        if dry_run:
            verdict = (
                "would be deleted" if not blockers else "would be kept: " + "; ".join(blockers)
            )
        table.add_row(name, c["spec"]["run"], str(c["spec"]["step"]), c["spec"]["path"], verdict)
        if dry_run:
            continue
        if force:
            cluster.force(name)
        if cluster.delete(name) and not blockers:
            pending.append(name)
    if dry_run:
        out.print(table)
        out.print(f"(dry run) {len(picked)} checkpoint(s) selected in {cluster.namespace}")
        return
    out.print(table)
    if wait and pending:
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if cluster.get(n) is not None]
            if pending:
                time.sleep(0.2)
        if pending:
            raise _fail(f"still present after {timeout:.0f} s: {', '.join(pending)}")
    out.print(f"{len(picked)} checkpoint(s) marked for deletion in {cluster.namespace}")


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    seconds = int(
        (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    )
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command("list")
def list_(
    run: Annotated[str | None, typer.Argument(help="Only this run's checkpoints.")] = None,
    namespace: Namespace = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l")] = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Checkpoints with phase, size and what blocks deletion, oldest step first."""
    cluster = Cluster(namespace, kubeconfig, context)
    items = [c for c in cluster.checkpoints(selector) if run is None or c["spec"]["run"] == run]
    items.sort(key=lambda c: (c["spec"]["run"], c["spec"]["step"], c["spec"]["attempt"]))
    table = Table(
        "NAME", "RUN", "STEP", "ATTEMPT", "FORMAT", "KIND", "PHASE", "SIZE", "BLOCKED BY", "AGE"
    )
    for c in items:
        status = c.get("status") or {}
        phase = status.get("phase") or "-"
        if c["metadata"].get("deletionTimestamp"):
            phase += " (terminating)"
        table.add_row(
            c["metadata"]["name"],
            c["spec"]["run"],
            str(c["spec"]["step"]),
            str(c["spec"]["attempt"]),
            c["spec"].get("format", "dir"),
            c["spec"].get("kind", "full"),
            phase,
            str(status.get("sizeBytes", "-")),
            "; ".join(status.get("blockedBy") or []) or "-",
            _age(c["metadata"].get("creationTimestamp")),
        )
    out.print(table)
