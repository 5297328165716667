"""Every file generated from the models, and whether the committed copies match them.

``ckpt-operator crds`` writes them and ``ckpt-operator crds --check`` (``make lint``) and a unit
test fail when one drifts, so the models stay the one source of the schema.
"""

from __future__ import annotations

from pathlib import Path

from ckpt_operator.api import chart_values, crdgen, crdref


def targets(repo: Path) -> dict[Path, str]:
    """Path -> the text it must hold."""
    return crdgen.targets(repo) | chart_values.targets(repo) | crdref.targets(repo)


def stale(repo: Path) -> list[Path]:
    """The generated files that are missing or differ from what the models give."""
    return [
        path
        for path, text in targets(repo).items()
        if not path.exists() or path.read_text() != text
    ]


def write(repo: Path) -> list[Path]:
    """Regenerate every file; returns the ones that changed."""
    changed = stale(repo)
    wanted = targets(repo)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    return changed
