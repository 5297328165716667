"""Every manifest in examples/ parses, and each TrainingRun validates against the API model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ckpt_operator.api.models import TrainingRunSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def _dropped(given: Any, kept: Any, path: str = "spec") -> list[str]:
    """Keys of ``given`` the model ignored: a typo the API server would prune silently."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [
            p
            for k, v in given.items()
            for p in ([f"{path}.{k}"] if k not in kept else _dropped(v, kept[k], f"{path}.{k}"))
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for p in _dropped(g, k, f"{path}[{i}]")
        ]
    return []


def test_examples_are_there() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"trainingrun.yaml", "trainingrun-multinode.yaml", "consumer.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_validates(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"]["name"], doc
        if doc["kind"] == "TrainingRun":
            spec = TrainingRunSpec.model_validate(doc["spec"])
            assert _dropped(doc["spec"], spec.wire()) == []
        for container in _pod_spec(doc).get("containers", []):
            assert not container["image"].startswith("python:"), "use the trainer image"


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec") or {}
    template = spec.get("template") or {}
    return template.get("spec") or {}
