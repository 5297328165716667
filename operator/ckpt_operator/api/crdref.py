"""``docs/crd-reference.md``: every field of the CRDs, generated from the same schema.

It walks the structural schema the API server enforces (``crdgen.crd``), so the reference says
exactly what admission checks: types, defaults, bounds, patterns, enums and CEL rules.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckpt_operator.api import crdgen, models, names

PATH = Path("docs") / "crd-reference.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: Any) -> str:
    return f"`{_cell(str(text))}`"


def _type(node: dict[str, Any]) -> str:
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"[]{_type(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return f"{kind} ({node['format']})" if "format" in node else kind


_BOUNDS = (
    ("minimum", "≥"),
    ("maximum", "≤"),
    ("minLength", "length ≥"),
    ("maxLength", "length ≤"),
    ("minItems", "items ≥"),
    ("maxItems", "items ≤"),
)


def _rules(node: dict[str, Any], required: bool) -> list[str]:
    found = ["required"] if required else []
    found += [f"{label} {node[key]}" for key, label in _BOUNDS if key in node]
    if "enum" in node:
        found.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    if "pattern" in node:
        found.append(f"matches {_code(node['pattern'])}")
    found += [rule["message"] for rule in node.get(models.CEL, [])]
    if node.get(models.PRESERVE_UNKNOWN):
        found.append("other fields kept as given")
    return found


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[str]:
    default = _code(json.dumps(node["default"])) if "default" in node else ""
    items = node.get("items") or {}
    description = _cell(node.get("description") or items.get("description", ""))
    rules = "; ".join(_rules(node, required))
    yield f"| {_code(path)} | {_type(node)} | {default} | {description} | {rules} |"
    children = node.get("properties") or {}
    for name, child in children.items():
        yield from _rows(child, f"{path}.{name}", name in node.get("required", []))
    for name, child in (items.get("properties") or {}).items():
        yield from _rows(child, f"{path}[].{name}", name in items.get("required", []))


def _kind(definition: crdgen.CrdDefinition) -> list[str]:
    doc = crdgen.crd(definition)
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    short = ", ".join(_code(s) for s in definition.short_names)
    about = (
        f"`{names.API_VERSION}`, namespaced; `kubectl get {definition.plural}` or {short}, "
        f"category `{names.CATEGORY}`."
    )
    about += "".join(f" Whole object: {rule['message']}." for rule in definition.root_rules)
    lines = [f"## {definition.kind}", "", *textwrap.wrap(about, 100)]
    lines += [
        "",
        "| field | type | default | description | validation |",
        "| --- | --- | --- | --- | --- |",
    ]
    for part in ("spec", "status"):
        lines += _rows(schema["properties"][part], part, part in schema.get("required", []))
    return [*lines, ""]


INTRO = """Every field of the CustomResourceDefinitions, with what the API server checks when an
object is created or changed (`kubectl explain` shows the same descriptions). What the fields
mean for the operator is in [design.md](design.md)."""


def render() -> str:
    lines = [
        "# CRD field reference",
        "",
        "<!-- Generated from ckpt_operator.api.models by `ckpt-operator crds`; do not edit. -->",
        "",
        INTRO,
        "",
    ]
    for definition in crdgen.DEFINITIONS:
        lines += _kind(definition)
    return "\n".join(lines)


def targets(repo: Path) -> dict[Path, str]:
    return {repo / PATH: render()}
