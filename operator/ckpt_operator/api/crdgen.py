"""Generate the CustomResourceDefinitions from the pydantic models in ``models``.

The API server needs a *structural* schema: every node typed, no ``$ref``, no ``anyOf`` of
types. Pydantic's JSON schema is close; ``structural`` inlines references, folds
``Optional[X]`` into ``X`` and maps ``extra="allow"`` to ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ckpt_operator.api import models, names

_DROP = {"title", "discriminator"}


@dataclass(frozen=True)
class CrdDefinition:
    """One of our kinds; its schema is ``models.<Kind>Spec`` and ``models.<Kind>Status``."""

    kind: str
    short_names: list[str]
    columns: list[dict[str, Any]]
    root_rules: list[dict[str, str]] = field(default_factory=list)

    @property
    def plural(self) -> str:
        return f"{self.kind.lower()}s"

    @property
    def name(self) -> str:
        return f"{self.plural}.{names.GROUP}"

    @property
    def spec(self) -> type[BaseModel]:
        model: type[BaseModel] = getattr(models, f"{self.kind}Spec")
        return model

    @property
    def status(self) -> type[BaseModel]:
        model: type[BaseModel] = getattr(models, f"{self.kind}Status")
        return model


def _column(name: str, path: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, **extra}


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

TRAINING_RUN = CrdDefinition(
    kind="TrainingRun",
    short_names=["tr"],
    columns=[
        _column("Phase", ".status.phase"),
        _column("Attempt", ".status.attempt", "integer"),
        _column("Restarts", ".status.restarts", "integer"),
        _column("Latest Step", ".status.latestCheckpoint.step", "integer"),
        _AGE,
        _column("Store", ".spec.store.uri", priority=1),
    ],
    # The run name becomes a label value (ckpt.dev/run), which is limited to 63 characters.
    root_rules=[
        {
            "rule": "self.metadata.name.size() <= 63",
            "message": "metadata.name must be at most 63 characters (it is used as a label value)",
        }
    ],
)

CHECKPOINT = CrdDefinition(
    kind="Checkpoint",
    short_names=["ckpt"],
    columns=[
        _column("Run", ".spec.run"),
        _column("Step", ".spec.step", "integer"),
        _column("Attempt", ".spec.attempt", "integer"),
        _column("Kind", ".spec.kind"),
        _column("Phase", ".status.phase"),
        _column("Size", ".status.sizeBytes", "integer"),
        _AGE,
        _column("Path", ".spec.path", priority=1),
        _column("Blocked By", ".status.blockedBy", priority=1),
    ],
)

DEFINITIONS = (TRAINING_RUN, CHECKPOINT)


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema rewritten into a Kubernetes structural schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _rewrite(raw, defs)
    return schema


def _rewrite(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {
            **target,
            **{k: v for k, v in node.items() if k != "description"},
            **({"description": node["description"]} if "description" in node else {}),
        }
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot make a structural schema of a union: {branches}")
        node = {**branches[0], **node}
        return _rewrite(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and (isinstance(value, dict | list) or value is None):
            continue  # object defaults come from the models, not from admission
        if key == "const":
            out["enum"] = [value]
        elif key == "additionalProperties" and value is True:
            out[models.PRESERVE_UNKNOWN] = True
        elif key in ("properties", "$defs"):
            out[key] = {name: _rewrite(sub, defs) for name, sub in value.items()}
        elif key == "format" and value == "date-time":
            out[key] = value
        else:
            out[key] = _rewrite(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("properties") == {}:
        del out["properties"]
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out[models.PRESERVE_UNKNOWN] = True
    if (
        "properties" in out
        and out.get("properties", {}).get("conditions", {}).get("type") == "array"
    ):
        conditions = out["properties"]["conditions"]
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    return out


def crd(definition: CrdDefinition) -> dict[str, Any]:
    """One CustomResourceDefinition object."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(definition.spec),
            "status": structural(definition.status),
        },
        "required": ["spec"],
    }
    if definition.root_rules:
        schema[models.CEL] = definition.root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": definition.name},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": definition.kind,
                "listKind": f"{definition.kind}List",
                "plural": definition.plural,
                "singular": definition.kind.lower(),
                "shortNames": definition.short_names,
                "categories": [names.CATEGORY],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": definition.columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


HEADER = "Generated from ckpt_operator.api.models by `ckpt-operator crds`; do not edit."
CHART = Path("charts") / "ckpt-operator"


def render(definition: CrdDefinition) -> str:
    """Plain YAML for ``kubectl apply`` (``crds/``)."""
    return f"# {HEADER}\n" + yaml.safe_dump(crd(definition), sort_keys=False, width=100)


def chart_template(doc: dict[str, Any]) -> str:
    """The chart's template of one CRD: rendered only with ``crds.install``, and annotated
    ``helm.sh/resource-policy: keep`` with ``crds.keep``.

    CRDs in a chart's ``crds/`` folder are installed once and never upgraded, so the chart ships
    them as templates (cert-manager's approach); Helm then upgrades them with the release.
    """
    spec = yaml.safe_dump({"spec": doc["spec"]}, sort_keys=False, width=100)
    if "{{" in spec:
        raise ValueError(f"{doc['metadata']['name']}: '{{{{' in the schema would be templated")
    return (
        f"{{{{- /* {HEADER} */}}}}\n"
        "{{- if .Values.crds.install }}\n"
        f"apiVersion: {doc['apiVersion']}\n"
        f"kind: {doc['kind']}\n"
        "metadata:\n"
        f"  name: {doc['metadata']['name']}\n"
        "  labels:\n"
        '    {{- include "ckpt-operator.labels" . | nindent 4 }}\n'
        "  {{- if .Values.crds.keep }}\n"
        "  annotations:\n"
        "    # Deleting a CRD deletes every object of its kind: uninstalling must not do that.\n"
        "    helm.sh/resource-policy: keep\n"
        "  {{- end }}\n"
        f"{spec}"
        "{{- end }}\n"
    )


def targets(repo: Path) -> dict[Path, str]:
    """The CRDs as plain YAML in ``crds/`` and as the chart's ``templates/crds/``."""
    out: dict[Path, str] = {}
    for definition in DEFINITIONS:
        out[repo / "crds" / f"{definition.name}.yaml"] = render(definition)
        template = repo / CHART / "templates" / "crds" / f"{definition.name}.yaml"
        out[template] = chart_template(crd(definition))
    return out
