"""The chart's values.yaml, its generated values.schema.json and the model both come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ckpt_operator.api import chart_values

REPO = Path(__file__).resolve().parents[2]


def _defaults() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((REPO / "charts/ckpt-operator/values.yaml").read_text())
    return values


def _objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return []
    found = [(path, node)] if node.get("type") == "object" else []
    for name, sub in (node.get("properties") or {}).items():
        found += _objects(sub, f"{path}.{name}")
    return found + _objects(node.get("items"), f"{path}[]")


def test_values_yaml_is_exactly_what_the_model_describes() -> None:
    chart_values.ChartValues.model_validate(_defaults(), strict=True)


def test_every_modelled_object_is_closed_and_complete() -> None:
    """Typos fail: objects we model forbid unknown keys and require the ones values.yaml has."""
    schema = chart_values.schema()
    assert "$ref" not in str(schema) and "$defs" not in schema
    for path, node in _objects(schema):
        if node.get("additionalProperties") is True:
            continue  # a Kubernetes structure passed through (resources, affinity, …)
        if "properties" in node:
            assert node["additionalProperties"] is False, path
            assert sorted(node["required"]) == sorted(node["properties"]), path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"allowedRoot": []}, "allowedRoot"),
        ({"crds": {"install": True}}, "crds.keep"),
        ({"replicas": 0}, "replicas"),
        ({"image": {"repository": "x", "tag": "", "pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        ({"metrics": {**_defaults()["metrics"], "port": 70000}}, "metrics.port"),
    ],
)
def test_the_model_rejects(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        chart_values.ChartValues.model_validate({**_defaults(), **change}, strict=True)
    assert field in str(caught.value)
