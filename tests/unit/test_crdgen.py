"""The CRD YAML is generated from the models: it must be structural and never drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ckpt_operator.api import crdgen, crdref, generated, models

REPO = Path(__file__).resolve().parents[2]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if isinstance(node, list):
        return [item for i, sub in enumerate(node) for item in _walk(sub, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    found = [(path, node)]
    for key, sub in node.items():
        found += _walk(sub, f"{path}.{key}")
    return found


def test_committed_generated_files_match_models() -> None:
    stale = [str(path.relative_to(REPO)) for path in generated.stale(REPO)]
    assert not stale, f"regenerate with `ckpt-operator crds`: {stale}"


@pytest.mark.parametrize("definition", crdgen.DEFINITIONS, ids=lambda d: d.kind)
def test_schema_is_structural(definition: crdgen.CrdDefinition) -> None:
    schema = crdgen.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "allOf" not in node, path
        if "properties" in node and not path.endswith(".properties"):
            assert node.get("type") == "object", f"{path} has properties but no type: object"


def test_crds_name_kinds_and_short_names() -> None:
    docs = {d.kind: yaml.safe_load(crdgen.render(d)) for d in crdgen.DEFINITIONS}
    assert docs["TrainingRun"]["spec"]["names"]["shortNames"] == ["tr"]
    assert docs["Checkpoint"]["spec"]["names"]["shortNames"] == ["ckpt"]
    for doc in docs.values():
        assert doc["spec"]["group"] == "ckpt.dev"
        assert doc["spec"]["scope"] == "Namespaced"
        assert doc["spec"]["names"]["categories"] == ["ckpt-operator"]
        version = doc["spec"]["versions"][0]
        assert version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}


def test_immutable_checkpoint_fields_carry_transition_rules() -> None:
    spec = crdgen.structural(models.CheckpointSpec)
    for field in ("run", "step", "attempt", "path", "format"):
        rules = [r["rule"] for r in spec["properties"][field][models.CEL]]
        assert "self == oldSelf" in rules, field


def test_example_trainingrun_parses_with_the_models() -> None:
    doc = yaml.safe_load((REPO / "examples" / "trainingrun.yaml").read_text())
    spec = models.TrainingRunSpec.model_validate(doc["spec"])
    assert spec.restart_policy.rules[0].action == "Ignore"


def _leaves(node: dict[str, Any], path: str) -> list[str]:
    found = [path]
    for name, sub in (node.get("properties") or {}).items():
        found += _leaves(sub, f"{path}.{name}")
    for name, sub in ((node.get("items") or {}).get("properties") or {}).items():
        found += _leaves(sub, f"{path}[].{name}")
    return found


@pytest.mark.parametrize("definition", crdgen.DEFINITIONS, ids=lambda d: d.kind)
def test_reference_has_a_row_for_every_field(definition: crdgen.CrdDefinition) -> None:
    reference = crdref.render()
    section = reference.split(f"## {definition.kind}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0].strip("| `") for line in section.splitlines() if "| `" in line]
    schema = crdgen.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = _leaves(schema["properties"]["spec"], "spec")
    fields += _leaves(schema["properties"]["status"], "status")
    assert rows == fields


def test_reference_states_the_checks() -> None:
    reference = crdref.render()
    assert (
        '| `spec.retention.keepBest.mode` | string | `"min"` | min: lower is better. '
        "| one of `min`, `max` |" in reference
    )
    assert "required; ≥ 0; step is immutable |" in reference
    assert "`^(file:///\\|s3://" in reference  # pipes escaped inside the table
