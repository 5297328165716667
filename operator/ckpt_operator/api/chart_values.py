"""The Helm chart's values as pydantic models: the one source of ``values.schema.json``.

Helm validates the merged values (``values.yaml`` plus the user's) against the schema before it
renders anything, so a misspelt key or a wrong type fails ``helm install`` at once instead of
being ignored. Every object is closed (``additionalProperties: false``) except the Kubernetes
fields passed through as they are (resources, securityContext, affinity, …). A unit test checks
that ``values.yaml`` itself validates; the templates keep only the checks a schema cannot phrase
with a helpful message (``allowedRoots`` present and made of URI prefixes, namespace names).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ckpt_operator.api.crdgen import CHART

KubeObject = dict[str, Any]
"""A Kubernetes structure rendered as it is; the API server checks it."""
Labels = dict[str, str]


class Values(BaseModel):
    """A closed object with camelCase keys, as in ``values.yaml``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Crds(Values):
    install: bool = Field(description="Install and upgrade the ckpt.dev CRDs with the release.")
    keep: bool = Field(description="Keep the CRDs when the release is uninstalled.")


class Peering(Values):
    name: str = Field(description="KopfPeering name; empty: the release's full name.")
    install_crds: bool = Field(
        alias="installCRDs", description="Install Kopf's peering CRDs when replicas > 1."
    )
    create: bool = Field(description="Create the (Cluster)KopfPeering object.")


class Image(Values):
    repository: str = Field(min_length=1)
    tag: str = Field(description="Empty: the chart's appVersion.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"]


class LocalObjectReference(Values):
    name: str = Field(min_length=1)


class ServiceAccount(Values):
    create: bool
    name: str = Field(description="Empty: the release's full name.")
    annotations: Labels


class Rbac(Values):
    create: bool = Field(description="Create the operator's least-privilege (Cluster)Roles.")


class Binding(Values):
    namespace: str = Field(min_length=1)
    service_account: str = Field(min_length=1)


class BoundRole(Values):
    create: bool
    bindings: list[Binding] = Field(description="RoleBindings to create.")


class Toggle(Values):
    create: bool


class MetricsService(Values):
    enabled: bool
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    port: int = Field(ge=1, le=65535)
    annotations: Labels


DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


class ServiceMonitor(Values):
    enabled: bool = Field(description="Create a prometheus-operator ServiceMonitor.")
    interval: str = Field(pattern=DURATION)
    scrape_timeout: str = Field(pattern=DURATION)
    labels: Labels


class Metrics(Values):
    port: int = Field(ge=1, le=65535, description="Prometheus port (--metrics-port).")
    service: MetricsService
    service_monitor: ServiceMonitor


class Liveness(Values):
    port: int = Field(ge=1, le=65535, description="Kopf's /healthz port (--liveness).")
    probe: dict[str, int] = Field(description="livenessProbe timings, e.g. periodSeconds.")


class CertManager(Values):
    enabled: bool = Field(description="Certificates from cert-manager instead of Helm's genCA.")
    issuer_ref: KubeObject = Field(description="Issuer/ClusterIssuer; empty: a self-signed one.")


class Webhook(Values):
    enabled: bool = Field(description="Serve the attach webhook (spec.workload runs).")
    port: int = Field(ge=1, le=65535, description="Port the operator serves it on.")
    failure_policy: Literal["Ignore", "Fail"] = Field(
        description="What the API server does when the operator cannot answer."
    )
    timeout_seconds: int = Field(ge=1, le=30, description="Seconds the API server waits.")
    namespace_selector: KubeObject = Field(description="Namespaces whose pods it sees.")
    cert_validity_days: int = Field(ge=1)
    cert_manager: CertManager


class ChartValues(Values):
    """The values of the ckpt-operator chart (values.yaml and the user's, merged)."""

    allowed_roots: list[str] = Field(
        description="Store URI prefixes TrainingRuns may use (--allowed-root). Required."
    )
    watch_namespaces: list[str] = Field(description="Namespaces to watch; empty: cluster-wide.")
    crds: Crds
    replicas: int = Field(ge=1, description="More than one runs Kopf hot standby.")
    peering: Peering
    image: Image
    image_pull_secrets: list[LocalObjectReference]
    name_override: str
    fullname_override: str
    service_account: ServiceAccount
    rbac: Rbac
    trainer_role: BoundRole = Field(description="ClusterRole for trainer pods.")
    consumer_role: BoundRole = Field(description="ClusterRole for consumer pods.")
    user_roles: Toggle = Field(description="Aggregated view/edit ClusterRoles.")
    metrics: Metrics
    liveness: Liveness
    webhook: Webhook
    extra_args: list[str] = Field(description="Appended to `ckpt-operator run`.")
    env: list[KubeObject]
    env_from: list[KubeObject]
    extra_volumes: list[KubeObject]
    extra_volume_mounts: list[KubeObject]
    resources: KubeObject
    pod_security_context: KubeObject
    security_context: KubeObject
    pod_annotations: Labels
    pod_labels: Labels
    priority_class_name: str
    termination_grace_period_seconds: int = Field(ge=0)
    node_selector: Labels
    tolerations: list[KubeObject]
    affinity: KubeObject


SCHEMA_PATH = CHART / "values.schema.json"


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve ``$ref`` and drop titles: a flat draft-07 schema that any tool reads."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        node = {
            **defs[node["$ref"].rsplit("/", 1)[-1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    return {
        key: (
            {name: _inline(sub, defs) for name, sub in value.items()}
            if key == "properties"
            else _inline(value, defs)
        )
        for key, value in node.items()
        if key != "title"
    }


def schema() -> dict[str, Any]:
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    inlined: dict[str, Any] = _inline(raw, defs)
    return {"$schema": "http://json-schema.org/draft-07/schema#", **inlined}


def targets(repo: Path) -> dict[Path, str]:
    return {repo / SCHEMA_PATH: json.dumps(schema(), indent=2) + "\n"}
