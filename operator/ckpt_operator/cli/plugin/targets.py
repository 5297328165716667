"""What a command-line target names: a Checkpoint name, ``RUN/STEP``, a store URI or a path.

A store URI or path may be of either layout (``…/step-0000000002.attempt-0`` or ``….tar``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ckpt_operator.cli.plugin.report import Body
from ckpt_operator.storage import layout


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
    """The checkpoints one command-line target names."""
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


def select(
    targets: Iterable[str],
    checkpoints: Sequence[Body],
    runs: Sequence[Body],
    selected: Iterable[Body] = (),
    every: int | None = None,
) -> list[Body]:
    """The checkpoints the targets and a selector's matches name, by run and step, once each."""
    chosen = {c["metadata"]["name"]: c for c in selected}
    for target in targets:
        for c in resolve(target, checkpoints, runs):
            chosen[c["metadata"]["name"]] = c
    picked = sorted(chosen.values(), key=lambda c: (c["spec"]["run"], c["spec"]["step"]))
    if every:
        picked = [c for c in picked if c["spec"]["step"] % every == 0]
    return picked
