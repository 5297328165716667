"""The reports of :mod:`~ckpt_operator.cli.plugin.report` as people read them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.cli.plugin.output import age, fields, out, size, table
from ckpt_operator.cli.plugin.report import verdict_text


def _phase(row: dict[str, Any]) -> str:
    return str(row["phase"]) + (" (terminating)" if row.get("terminating") else "")


def checkpoints(rows: Sequence[dict[str, Any]], now: datetime) -> None:
    grid = table(
        "NAME", "RUN", "STEP", "ATTEMPT", "FORMAT", "KIND", "PHASE", "SIZE", "BLOCKED BY", "AGE"
    )
    for r in rows:
        grid.add_row(
            r["name"],
            r["run"],
            str(r["step"]),
            str(r["attempt"]),
            r["format"],
            r["kind"],
            _phase(r),
            size(r["sizeBytes"]),
            "; ".join(r["blockedBy"]) or "-",
            age(r["created"], now),
        )
    out.print(grid)


def describe(d: dict[str, Any], now: datetime) -> None:
    v, deletion, manifest = d["verification"], d["deletion"], d["manifest"]
    fields(
        [
            ("Name", d["name"]),
            ("Namespace", d["namespace"]),
            ("Run", d["run"] + ("" if d["runExists"] else " (gone)")),
            ("Step", f"{d['step']} (attempt {d['attempt']})"),
            ("Kind", f"{d['kind']}, {d['format']}"),
            ("Location", d["uri"]),
            ("Age", age(d["created"], now)),
            ("Phase", v["phase"] + (" (terminating)" if deletion["terminating"] else "")),
            ("Verification", v["message"]),
            (
                "Verified",
                f"{v['verifiedAt']} ({age(v['verifiedAt'], now)} ago)" if v["verifiedAt"] else None,
            ),
            ("Size", size(v["sizeBytes"])),
            ("Digest", v["digest"]),
            ("Resume", verdict_text(d["resume"])),
            (
                "Retention",
                ("expires: " if d["retention"]["expires"] else "") + d["retention"]["reason"],
            ),
            ("Blocked by", "; ".join(deletion["blockedBy"]) or _unblocked(deletion)),
            ("Manifest", manifest["source"]),
        ]
    )
    if "files" not in manifest:
        return
    fields(
        [
            ("  Created", manifest["created"]),
            ("  Metrics", ", ".join(f"{k}={v}" for k, v in manifest["metrics"].items())),
            ("  Total", f"{size(manifest['total_size'])} in {len(manifest['files'])} files"),
        ]
    )
    grid = table("  FILE", "SIZE", manifest["algorithm"].upper())
    for f in manifest["files"]:
        grid.add_row(f"  {f['path']}", size(f["size"]), f["checksum"])
    out.print(grid)


def _unblocked(deletion: dict[str, Any]) -> str:
    if deletion["forceDelete"]:
        return f"nothing: {names.ANNOTATION_FORCE_DELETE} is set"
    return "nothing: its storage may go"


def resume(d: dict[str, Any]) -> None:
    target = d["target"]
    where = f"TrainingRun {d['run']} ({d['phase'] or 'no phase yet'}, attempt {d['attempt']})"
    if target is None:
        out.print(f"{where}: the next attempt starts from scratch (no usable checkpoint)")
    else:
        out.print(
            f"{where}: the next attempt resumes from {target['name']} "
            f"(step {target['step']}, attempt {target['attempt']})"
        )
    nxt = d["next"]
    out.print(f"  {names.ENV_RESUME_FROM}={nxt[names.ENV_RESUME_FROM]}")
    fallbacks = len(nxt[names.ENV_RESUME_CANDIDATES])
    out.print(f"  {names.ENV_RESUME_CANDIDATES}: {fallbacks} URIs, tried in the order below")
    if d["currentResumedFrom"]:
        out.print(f"  The current attempt resumed from {d['currentResumedFrom']}.")
    grid = table("STEP", "ATTEMPT", "NAME", "PHASE", "VERDICT")
    for r in d["checkpoints"]:
        grid.add_row(str(r["step"]), str(r["attempt"]), r["name"], r["phase"], verdict_text(r))
    out.print(grid)


def gc(d: dict[str, Any]) -> None:
    policy = d["retention"]
    rules = ", ".join(f"{k}={v}" for k, v in policy.items()) if policy else "none"
    out.print(f"TrainingRun {d['run']}: retention {rules}")
    grid = table("STEP", "ATTEMPT", "NAME", "PHASE", "SIZE", "ACTION", "WHY")
    for r in d["checkpoints"]:
        why = r["reason"] + "".join(f"; held: {b}" for b in r["blockedBy"])
        grid.add_row(
            str(r["step"]),
            str(r["attempt"]),
            r["name"],
            r["phase"],
            size(r["sizeBytes"]),
            r["action"],
            why,
        )
    out.print(grid)
    s = d["summary"]
    freed = size(s["bytesFreed"])
    out.print(f"{s['delete']} to delete ({freed}), {s['held']} held back, {s['keep']} kept")


def verified(rows: Sequence[dict[str, Any]]) -> None:
    grid = table("NAME", "PHASE", "VERIFIED AT", "MESSAGE")
    for r in rows:
        phase = r["phase"] if r["answered"] else f"{r['phase']} (no answer yet)"
        grid.add_row(r["name"], phase, r["verifiedAt"] or "-", r["message"] or "-")
    out.print(grid)
