"""The Helm chart against a real API server.

It lints; it refuses to render without ``allowedRoots``; every object it renders (defaults, a
namespaced install, hot standby; our CRDs included) passes a strict server-side dry run; the
flags it passes are the ones ``ckpt-operator run`` parses; and the RBAC it grants, applied for
real and probed with SubjectAccessReviews, lets the operator, trainers, consumers and users do
what they need and nothing more. The CRDs' own install, upgrade and uninstall are in
``test_chart_crds.py``.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from typer.testing import CliRunner

from ckpt_operator.api import crdgen
from ckpt_operator.testing.binaries import KUBERNETES_VERSION
from ckpt_operator.testing.controlplane import install_crds
from tests.integration.conftest import CRD_DELETION_TIMEOUT_S, Helm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ckpt-operator"
ROOTS = ["file:///data/checkpoints/", "s3://bucket/prefix/"]
KOPF_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
PEERING_KINDS = ("ClusterKopfPeering", "KopfPeering")
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

Manifest = list[dict[str, Any]]

# --------------------------------------------------------------------------------------------
# helpers


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(
    helm: Helm, tmp_path: Path, release: str, namespace: str, values: dict[str, Any]
) -> Manifest:
    """``helm template`` → the list of rendered objects (hooks included)."""
    out = helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBERNETES_VERSION,
        "--values",
        str(_values_file(tmp_path, values)),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kinds(manifest: Manifest) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in manifest:
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    return counts


def only(manifest: Manifest, kind: str) -> dict[str, Any]:
    found = [obj for obj in manifest if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def dynamic(k8s: Any, tmp_path: Path) -> DynamicClient:
    """A dynamic client with a private discovery cache (new CRDs appear on a fresh one)."""
    return DynamicClient(k8s, cache_file=str(tmp_path / f"discovery-{uuid.uuid4().hex}.json"))


def create(dyn: DynamicClient, obj: dict[str, Any], namespace: str, *, dry_run: bool) -> None:
    """Create ``obj`` (server-side dry run unless told otherwise), strict field validation."""
    api = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    target = obj["metadata"].get("namespace", namespace) if api.namespaced else None
    api.create(
        body=obj,
        namespace=target,
        dry_run="All" if dry_run else None,
        query_params=[("fieldValidation", "Strict")],
    )


def dry_run(dyn: DynamicClient, obj: dict[str, Any], namespace: str) -> None:
    """Validate ``obj`` on the server: a dry-run create, or a dry-run replace of the live
    object when it exists (our CRDs, which every test's control plane holds already)."""
    try:
        create(dyn, obj, namespace, dry_run=True)
    except ConflictError:
        api = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        target = obj["metadata"].get("namespace", namespace) if api.namespaced else None
        live = api.get(name=obj["metadata"]["name"], namespace=target)
        body = copy.deepcopy(obj)
        body["metadata"]["resourceVersion"] = live.metadata.resourceVersion
        api.replace(
            body=body,
            namespace=target,
            dry_run="All",
            query_params=[("fieldValidation", "Strict")],
        )


def delete_quietly(dyn: DynamicClient, obj: dict[str, Any]) -> None:
    api = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj["metadata"].get("namespace") if api.namespaced else None
    with contextlib.suppress(NotFoundError):
        api.delete(name=obj["metadata"]["name"], namespace=namespace)


def delete_crds_and_wait(
    k8s: Any, names: list[str], timeout: float = CRD_DELETION_TIMEOUT_S
) -> None:
    extensions = client.ApiextensionsV1Api(k8s)
    for name in names:
        try:
            extensions.delete_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                extensions.read_custom_resource_definition(name)
            except ApiException as error:
                if error.status == 404:
                    break
                raise
            assert time.monotonic() < deadline, f"CRD {name} still there after {timeout:.0f} s"
            time.sleep(0.2)


def existing_crds(k8s: Any, names: tuple[str, ...]) -> set[str]:
    extensions = client.ApiextensionsV1Api(k8s)
    present = set()
    for name in names:
        try:
            extensions.read_custom_resource_definition(name)
            present.add(name)
        except ApiException as error:
            if error.status != 404:
                raise
    return present


@pytest.fixture
def applied(k8s: Any, tmp_path: Path) -> Iterator[Callable[[Manifest, str], None]]:
    """Factory: create the RBAC objects of a manifest for real; cluster-scoped ones are deleted
    afterwards (namespaced ones go with their test namespaces)."""
    dyn = dynamic(k8s, tmp_path)
    created: list[dict[str, Any]] = []

    def apply(manifest: Manifest, namespace: str) -> None:
        for obj in manifest:
            if obj["kind"] in RBAC_KINDS:
                create(dyn, obj, namespace, dry_run=False)
                created.append(obj)

    yield apply
    for obj in reversed(created):
        if obj["kind"].startswith("Cluster"):
            delete_quietly(dyn, obj)


# --------------------------------------------------------------------------------------------
# SubjectAccessReviews


def allowed(
    k8s: Any,
    user: str,
    verb: str,
    resource: str,
    *,
    namespace: str | None,
    group: str = "",
    groups: tuple[str, ...] = (),
) -> bool:
    """Whether ``user`` may ``verb`` ``resource`` (``res/sub`` for a subresource) there."""
    name, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=[*groups, "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                verb=verb,
                group=group,
                resource=name,
                subresource=subresource or None,
            ),
        )
    )
    result = client.AuthorizationV1Api(k8s).create_subject_access_review(review)
    return bool(result.status and result.status.allowed)


def sa_user(namespace: str, name: str) -> tuple[str, tuple[str, ...]]:
    return (
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
    )


# (group, resource, verbs)
Rule = tuple[str, str, tuple[str, ...]]

OPERATOR_NAMESPACED_NEEDS: list[Rule] = [
    ("", "events", ("create", "patch")),
    ("ckpt.dev", "trainingruns", ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("ckpt.dev", "checkpoints", ("get", "list", "watch", "create", "update", "patch", "delete")),
    ("ckpt.dev", "trainingruns/status", ("get", "patch", "update")),
    ("ckpt.dev", "checkpoints/status", ("get", "patch", "update")),
    ("ckpt.dev", "trainingruns/finalizers", ("update",)),
    ("ckpt.dev", "checkpoints/finalizers", ("update",)),
    ("", "pods", ("get", "list", "watch", "create", "delete", "patch")),
    ("", "secrets", ("get",)),
]
OPERATOR_CLUSTER_NEEDS: list[Rule] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get", "list", "watch")),
]
# Namespaced things the operator must never do, anywhere.
OPERATOR_NAMESPACED_FORBIDDEN: list[Rule] = [
    ("", "secrets", ("list", "watch", "create", "update", "patch", "delete", "deletecollection")),
    ("", "pods", ("update", "deletecollection")),
    ("", "pods/exec", ("create", "get")),
    ("", "pods/status", ("patch", "update")),
    ("", "pods/log", ("get",)),
    ("", "events", ("delete", "list")),
    ("", "configmaps", ("get", "create")),
    ("", "services", ("create", "delete")),
    ("", "serviceaccounts", ("create",)),
    ("", "serviceaccounts/token", ("create",)),
    ("", "persistentvolumeclaims", ("get", "create", "delete")),
    ("apps", "deployments", ("get", "list", "create", "patch", "update", "delete")),
    ("apps", "statefulsets", ("create", "delete")),
    ("batch", "jobs", ("create", "delete")),
    ("rbac.authorization.k8s.io", "roles", ("create", "bind", "escalate")),
    ("rbac.authorization.k8s.io", "rolebindings", ("create",)),
    ("ckpt.dev", "trainingruns", ("deletecollection",)),
    ("ckpt.dev", "checkpoints", ("deletecollection",)),
    ("*", "*", ("*", "get")),
]
OPERATOR_CLUSTER_FORBIDDEN: list[Rule] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("create", "update", "patch", "delete")),
    ("", "namespaces", ("get", "create", "delete", "patch")),
    ("", "nodes", ("get", "list", "patch")),
    ("", "persistentvolumes", ("list", "delete")),
    ("rbac.authorization.k8s.io", "clusterroles", ("create", "bind", "escalate")),
    ("rbac.authorization.k8s.io", "clusterrolebindings", ("create",)),
    ("", "users", ("impersonate",)),
    ("kopf.dev", "clusterkopfpeerings", ("create", "delete")),
    ("*", "*", ("*", "list")),
]
PEERING_VERBS = ("get", "list", "watch", "patch")


class Access:
    """Assertions about one subject's access, with a wait for the RBAC cache on first use."""

    def __init__(self, k8s: Any, user: str, groups: tuple[str, ...] = ()) -> None:
        self.k8s, self.user, self.groups = k8s, user, groups

    def can(self, verb: str, resource: str, namespace: str | None, group: str = "") -> bool:
        return allowed(
            self.k8s,
            self.user,
            verb,
            resource,
            namespace=namespace,
            group=group,
            groups=self.groups,
        )

    def wait_until(self, verb: str, resource: str, namespace: str | None, group: str = "") -> None:
        """The authorizer learns of new bindings through an informer: give it a moment."""
        deadline = time.monotonic() + 15
        while not self.can(verb, resource, namespace, group):
            assert time.monotonic() < deadline, f"{self.user} never got {verb} {resource}"
            time.sleep(0.1)

    def check(self, rules: list[Rule], namespaces: Sequence[str | None], expect: bool) -> list[str]:
        """The (verb, resource, namespace) triples whose answer is not ``expect``."""
        wrong = []
        for namespace in namespaces:
            for group, resource, verbs in rules:
                for verb in verbs:
                    if self.can(verb, resource, namespace, group) != expect:
                        where = namespace or "cluster-wide"
                        wrong.append(f"{verb} {group or 'core'}/{resource} in {where}")
        return wrong


# --------------------------------------------------------------------------------------------
# lint and rendering


@pytest.mark.parametrize(
    "values",
    [
        {"allowedRoots": ROOTS},
        {"allowedRoots": ROOTS, "replicas": 2, "watchNamespaces": ["a", "b"]},
        {"allowedRoots": ROOTS, "monitoring": {"serviceMonitor": {"enabled": True}}},
    ],
    ids=["defaults", "hot-standby-namespaced", "service-monitor"],
)
def test_helm_lint(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> None:
    values_file = str(_values_file(tmp_path, values))
    proc = helm("lint", str(CHART), "--strict", "--values", values_file)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "allowedRoots is required"),
        ({"allowedRoots": []}, "allowedRoots is required"),
        ({"allowedRoots": ["/data/checkpoints"]}, "is not a URI prefix"),
        ({"allowedRoots": ROOTS, "watchNamespaces": ["team-*"]}, "exact names only"),
        # values.schema.json: keys and types
        ({"allowedRoots": ROOTS, "replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({"allowedRoots": ROOTS, "replica": 2}, "additional properties 'replica' not allowed"),
        (
            {"allowedRoots": ROOTS, "metrics": {"servicemonitor": {"enabled": True}}},
            "at '/metrics': additional properties 'servicemonitor' not allowed",
        ),
        ({"allowedRoots": ROOTS, "replicas": "two"}, "at '/replicas': got string, want integer"),
        ({"allowedRoots": [1]}, "at '/allowedRoots/0': got number, want string"),
        ({"allowedRoots": ROOTS, "crds": {"keep": "no"}}, "at '/crds/keep': got string"),
        (
            {"allowedRoots": ROOTS, "trainerRole": {"bindings": [{"namespace": "ml"}]}},
            "missing property 'serviceAccount'",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "not-a-uri",
        "glob-namespace",
        "no-replicas",
        "typo-top-level",
        "typo-nested",
        "wrong-type",
        "root-not-a-string",
        "crds-keep-not-a-bool",
        "binding-without-service-account",
    ],
)
def test_bad_values_fail_with_a_clear_message(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = helm(
        "template", "r", str(CHART), "--values", str(_values_file(tmp_path, values)), check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def _cli_config(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Parse the container's args with the real ``ckpt-operator`` CLI, without running it."""
    from ckpt_operator.cli import operator as cli
    from ckpt_operator.handlers import startup as operator

    seen: dict[str, Any] = {}

    def fake_run(config: Any, *, liveness_endpoint: str | None, peering: str | None) -> None:
        seen.update(config=config, liveness=liveness_endpoint, peering=peering)

    monkeypatch.setattr(operator, "run", fake_run)
    monkeypatch.delenv("CKPT_ALLOWED_ROOTS", raising=False)
    result = CliRunner().invoke(cli.app, ["run", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_rendered_flags_are_what_the_cli_parses(
    helm: Helm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"allowedRoots": ROOTS, "watchNamespaces": ["a", "b"], "replicas": 2}
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", values)
    container = only(manifest, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    seen = _cli_config(container["args"], monkeypatch)
    assert seen["config"].allowed_roots == tuple(ROOTS)
    assert seen["config"].namespaces == ("a", "b")
    assert seen["config"].metrics_port == 8000
    assert seen["liveness"] == "http://0.0.0.0:8080/healthz"
    assert seen["peering"] == "ckpt-ckpt-operator"

    single = render(helm, tmp_path, "ckpt", "ckpt-system", {"allowedRoots": ROOTS})
    args = only(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    seen = _cli_config(args, monkeypatch)
    assert seen["peering"] is None, "one replica runs without peering"
    assert seen["config"].namespaces == ()


def test_deployment_shape(helm: Helm, tmp_path: Path) -> None:
    values = {
        "allowedRoots": ROOTS,
        "image": {"repository": "registry.example/ckpt-operator", "tag": "1.2.3"},
        "extraVolumes": [{"name": "ckpts", "persistentVolumeClaim": {"claimName": "ckpts"}}],
        "extraVolumeMounts": [{"name": "ckpts", "mountPath": "/data/checkpoints"}],
        "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        "envFrom": [{"secretRef": {"name": "s3-creds"}}],
        "podAnnotations": {"example.com/a": "b"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists"}],
        "monitoring": {"serviceMonitor": {"enabled": True}},
    }
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", values)
    deployment = only(manifest, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert container["image"] == "registry.example/ckpt-operator:1.2.3"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "metrics", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in ("healthz", 8080)
    assert {"containerPort": 8080}.items() <= next(
        p for p in container["ports"] if p["name"] == probe["port"]
    ).items()
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert {"name": "ckpts", "mountPath": "/data/checkpoints"} in container["volumeMounts"]
    assert {"name": "ckpts", "persistentVolumeClaim": {"claimName": "ckpts"}} in pod["volumes"]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "system", "operator": "Exists"}]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["example.com/a"] == "b"
    service = only(manifest, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = only(manifest, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "ServiceMonitor" not in kinds(render(helm, tmp_path, "x", "y", {"allowedRoots": ROOTS}))


@pytest.mark.parametrize(
    ("crds", "installed", "kept"),
    [({}, True, True), ({"keep": False}, True, False), ({"install": False}, False, False)],
    ids=["defaults", "not-kept", "not-installed"],
)
def test_crds_are_templates_of_the_generated_schema(
    helm: Helm, tmp_path: Path, crds: dict[str, bool], installed: bool, kept: bool
) -> None:
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", {"allowedRoots": ROOTS, "crds": crds})
    rendered = {
        obj["metadata"]["name"]: obj
        for obj in manifest
        if obj["kind"] == "CustomResourceDefinition"
    }
    assert sorted(rendered) == (sorted(d.name for d in crdgen.DEFINITIONS) if installed else [])
    for definition in crdgen.DEFINITIONS if installed else ():
        crd = rendered[definition.name]
        assert crd["spec"] == crdgen.crd(definition)["spec"]
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        policy = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert policy == ("keep" if kept else None)


# --------------------------------------------------------------------------------------------
# server-side dry runs


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["{ns}", "{other}"]},
    "hot-standby": {"replicas": 2},
    "hot-standby-namespaced": {"replicas": 3, "watchNamespaces": ["{ns}", "{other}"]},
}
EXPECTED_KINDS = {
    "defaults": {
        "CustomResourceDefinition": 2,
        "ServiceAccount": 1,
        "ClusterRole": 5,
        "ClusterRoleBinding": 1,
        "Service": 1,
        "Deployment": 1,
        "ValidatingAdmissionPolicy": 3,
        "ValidatingAdmissionPolicyBinding": 3,
    },
    "watch-namespaces": {
        "CustomResourceDefinition": 2,
        "ServiceAccount": 1,
        "ClusterRole": 5,
        "ClusterRoleBinding": 1,
        "Role": 2,
        "RoleBinding": 2 + 2,
        "Service": 1,
        "Deployment": 1,
        "ValidatingAdmissionPolicy": 3,
        "ValidatingAdmissionPolicyBinding": 3,
    },
    "hot-standby": {
        "ServiceAccount": 1,
        "ClusterRole": 5,
        "ClusterRoleBinding": 1,
        "Service": 1,
        "Deployment": 1,
        "ValidatingAdmissionPolicy": 3,
        "ValidatingAdmissionPolicyBinding": 3,
        "CustomResourceDefinition": 2 + 2,
        "ClusterKopfPeering": 1,
    },
    "hot-standby-namespaced": {
        "ServiceAccount": 1,
        "ClusterRole": 5,
        "ClusterRoleBinding": 1,
        "Role": 2,
        "RoleBinding": 2,
        "Service": 1,
        "Deployment": 1,
        "ValidatingAdmissionPolicy": 3,
        "ValidatingAdmissionPolicyBinding": 3,
        "CustomResourceDefinition": 2 + 2,
        "KopfPeering": 2,
    },
}


def _scenario_values(name: str, namespace: str, other: str) -> dict[str, Any]:
    values: dict[str, Any] = {"allowedRoots": ROOTS, **SCENARIOS[name]}
    if "watchNamespaces" in values:
        values["watchNamespaces"] = [
            item.format(ns=namespace, other=other) for item in values["watchNamespaces"]
        ]
    if name == "watch-namespaces":
        values["trainerRole"] = {"bindings": [{"namespace": namespace, "serviceAccount": "t"}]}
        values["consumerRole"] = {"bindings": [{"namespace": other, "serviceAccount": "c"}]}
    return values


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_rendered_object_passes_a_server_side_dry_run(
    helm: Helm,
    k8s: Any,
    kubeconfig: Path,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    scenario: str,
) -> None:
    values = _scenario_values(scenario, namespace, other_namespace)
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, values)
    assert kinds(manifest) == EXPECTED_KINDS[scenario]

    peering = [obj for obj in manifest if obj["kind"] in PEERING_KINDS]
    rest = [obj for obj in manifest if obj["kind"] not in PEERING_KINDS]
    preexisting = existing_crds(k8s, KOPF_CRDS)
    dyn = dynamic(k8s, tmp_path)
    rejected = []
    for obj in rest:
        try:
            dry_run(dyn, obj, namespace)
        except Exception as error:
            rejected.append(f"{obj['kind']}/{obj['metadata']['name']}: {error}")
    assert not rejected, "\n".join(rejected)
    crds = sorted(
        obj["metadata"]["name"] for obj in rest if obj["kind"] == "CustomResourceDefinition"
    )
    assert set(crds) - set(KOPF_CRDS) == {"checkpoints.ckpt.dev", "trainingruns.ckpt.dev"}
    if not peering:
        return

    # The peering objects need Kopf's CRDs: install the rendered ones for real, then dry-run.
    kopf = [obj for obj in rest if obj["metadata"]["name"] in KOPF_CRDS]
    assert sorted(crd["metadata"]["name"] for crd in kopf) == sorted(KOPF_CRDS)
    ours = [crd for crd in kopf if crd["metadata"]["name"] not in preexisting]
    try:
        install_crds(kubeconfig, ours)
        dyn = dynamic(k8s, tmp_path)
        for obj in peering:
            create(dyn, obj, namespace, dry_run=True)
    finally:
        delete_crds_and_wait(k8s, [crd["metadata"]["name"] for crd in ours])


# --------------------------------------------------------------------------------------------
# RBAC, applied for real and probed with SubjectAccessReviews


def _operator_sa(manifest: Manifest) -> str:
    name: str = only(manifest, "ServiceAccount")["metadata"]["name"]
    return name


def test_cluster_wide_operator_rbac_is_least_privilege(
    helm: Helm,
    k8s: Any,
    tmp_path: Path,
    namespace: str,
    applied: Callable[[Manifest, str], None],
) -> None:
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, {"allowedRoots": ROOTS})
    applied(manifest, namespace)
    operator = Access(k8s, *sa_user(namespace, _operator_sa(manifest)))
    operator.wait_until("list", "trainingruns", None, "ckpt.dev")

    anywhere = [namespace, "some-other-namespace"]
    wrong = operator.check(OPERATOR_NAMESPACED_NEEDS, anywhere, expect=True)
    wrong += operator.check(OPERATOR_CLUSTER_NEEDS, [None], expect=True)
    # Cluster-wide watches of everything it handles.
    wrong += operator.check(
        [
            ("ckpt.dev", "trainingruns", ("list", "watch")),
            ("ckpt.dev", "checkpoints", ("list", "watch")),
            ("", "pods", ("list", "watch")),
        ],
        [None],
        expect=True,
    )
    assert not wrong, "the operator lacks:\n" + "\n".join(wrong)

    wrong = operator.check(OPERATOR_NAMESPACED_FORBIDDEN, anywhere, expect=False)
    wrong += operator.check(OPERATOR_CLUSTER_FORBIDDEN, [None], expect=False)
    # No peering with one replica; Kopf needs no namespace listing cluster-wide.
    wrong += operator.check([("kopf.dev", "clusterkopfpeerings", PEERING_VERBS)], [None], False)
    wrong += operator.check([("", "namespaces", ("list", "watch"))], [None], expect=False)
    wrong += operator.check([("", "secrets", ("list", "watch"))], [None], expect=False)
    assert not wrong, "the operator may also:\n" + "\n".join(wrong)


def test_namespaced_operator_rbac_stays_in_its_namespaces(
    helm: Helm,
    k8s: Any,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    applied: Callable[[Manifest, str], None],
) -> None:
    # The operator runs in `namespace` and watches `other_namespace` only, with hot standby.
    values = {"allowedRoots": ROOTS, "watchNamespaces": [other_namespace], "replicas": 2}
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, values)
    applied(manifest, namespace)
    operator = Access(k8s, *sa_user(namespace, _operator_sa(manifest)))
    operator.wait_until("patch", "trainingruns", other_namespace, "ckpt.dev")
    operator.wait_until("list", "customresourcedefinitions", None, "apiextensions.k8s.io")

    peering: list[Rule] = [("kopf.dev", "kopfpeerings", PEERING_VERBS)]
    wrong = operator.check(OPERATOR_NAMESPACED_NEEDS + peering, [other_namespace], expect=True)
    wrong += operator.check(OPERATOR_CLUSTER_NEEDS, [None], expect=True)
    # Kopf lists and watches namespaces when it is restricted to some (never cluster-wide).
    wrong += operator.check([("", "namespaces", ("list", "watch"))], [None], expect=True)
    assert not wrong, "the operator lacks:\n" + "\n".join(wrong)

    # Nothing of it in its own namespace, an unwatched one, or across the cluster.
    elsewhere = [namespace, "unwatched-namespace", None]
    wrong = operator.check(OPERATOR_NAMESPACED_NEEDS + peering, elsewhere, expect=False)
    wrong += operator.check(OPERATOR_NAMESPACED_FORBIDDEN, [other_namespace], expect=False)
    wrong += operator.check(OPERATOR_CLUSTER_FORBIDDEN, [None], expect=False)
    wrong += operator.check([("kopf.dev", "clusterkopfpeerings", PEERING_VERBS)], [None], False)
    wrong += operator.check([("kopf.dev", "kopfpeerings", ("create", "delete"))], [None], False)
    assert not wrong, "the operator may also:\n" + "\n".join(wrong)


def test_hot_standby_cluster_wide_may_use_its_cluster_peering(
    helm: Helm,
    k8s: Any,
    tmp_path: Path,
    namespace: str,
    applied: Callable[[Manifest, str], None],
) -> None:
    values = {"allowedRoots": ROOTS, "replicas": 2}
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, values)
    applied(manifest, namespace)
    operator = Access(k8s, *sa_user(namespace, _operator_sa(manifest)))
    operator.wait_until("patch", "clusterkopfpeerings", None, "kopf.dev")
    wrong = operator.check([("kopf.dev", "clusterkopfpeerings", PEERING_VERBS)], [None], True)
    wrong += operator.check(
        [("kopf.dev", "clusterkopfpeerings", ("create", "delete", "update"))], [None], False
    )
    wrong += operator.check([("kopf.dev", "kopfpeerings", PEERING_VERBS)], [namespace], False)
    assert not wrong, "\n".join(wrong)


def test_trainer_consumer_and_user_roles(
    helm: Helm,
    k8s: Any,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    applied: Callable[[Manifest, str], None],
) -> None:
    values = {
        "allowedRoots": ROOTS,
        "trainerRole": {"bindings": [{"namespace": other_namespace, "serviceAccount": "trainer"}]},
        "consumerRole": {"bindings": [{"namespace": other_namespace, "serviceAccount": "server"}]},
    }
    release = f"ckpt-{namespace}"
    manifest = render(helm, tmp_path, release, namespace, values)
    fullname = f"{release}-ckpt-operator"
    roles = {obj["metadata"]["name"]: obj for obj in manifest if obj["kind"] == "ClusterRole"}
    view_labels = roles[f"{fullname}-view"]["metadata"]["labels"]
    edit_labels = roles[f"{fullname}-edit"]["metadata"]["labels"]
    assert view_labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    # The test control plane runs no clusterrole-aggregation controller: bind users directly.
    users = []
    for user, role in (("alice", "view"), ("bob", "edit")):
        users.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-{role}", "namespace": other_namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{fullname}-{role}",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            }
        )
    applied(manifest + users, namespace)

    trainer = Access(k8s, *sa_user(other_namespace, "trainer"))
    trainer.wait_until("create", "checkpoints", other_namespace, "ckpt.dev")
    wrong = trainer.check(
        [
            ("ckpt.dev", "checkpoints", ("create", "patch")),
            ("ckpt.dev", "trainingruns", ("get",)),
        ],
        [other_namespace],
        expect=True,
    )
    wrong += trainer.check(
        [
            ("ckpt.dev", "checkpoints", ("get", "list", "delete", "update")),
            ("ckpt.dev", "checkpoints", ("deletecollection",)),
            ("ckpt.dev", "trainingruns", ("create", "update", "patch", "delete", "list")),
            # Only the operator decides what is Ready.
            ("ckpt.dev", "checkpoints/status", ("patch", "update")),
            ("ckpt.dev", "trainingruns/status", ("patch",)),
            ("", "pods", ("create", "delete", "patch")),
            ("", "secrets", ("get", "list")),
        ],
        [other_namespace],
        expect=False,
    )
    wrong += trainer.check([("ckpt.dev", "checkpoints", ("create",))], [namespace], False)

    consumer = Access(k8s, *sa_user(other_namespace, "server"))
    consumer.wait_until("patch", "pods", other_namespace)
    wrong += consumer.check(
        [("", "pods", ("patch",)), ("ckpt.dev", "checkpoints", ("list",))],
        [other_namespace],
        expect=True,
    )
    wrong += consumer.check(
        [
            ("", "pods", ("get", "create", "delete", "update")),
            ("ckpt.dev", "checkpoints", ("get", "watch", "create", "delete", "patch")),
            ("ckpt.dev", "trainingruns", ("get",)),
            ("", "secrets", ("get",)),
        ],
        [other_namespace],
        expect=False,
    )
    wrong += consumer.check([("", "pods", ("patch",))], [namespace], expect=False)

    alice, bob = Access(k8s, "alice"), Access(k8s, "bob")
    bob.wait_until("delete", "checkpoints", other_namespace, "ckpt.dev")
    ours = ("trainingruns", "checkpoints")
    wrong += alice.check(
        [("ckpt.dev", r, ("get", "list", "watch")) for r in ours], [other_namespace], True
    )
    wrong += alice.check(
        [("ckpt.dev", r, ("create", "patch", "delete")) for r in ours], [other_namespace], False
    )
    wrong += bob.check(
        [("ckpt.dev", r, ("get", "create", "patch", "delete")) for r in ours],
        [other_namespace],
        expect=True,
    )
    wrong += bob.check([("ckpt.dev", "checkpoints/status", ("patch",))], [other_namespace], False)
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------------------------
# a real install: hot standby's peering objects through install, upgrade and uninstall


def test_install_upgrade_uninstall_with_hot_standby(
    helm: Helm, k8s: Any, kubeconfig: Path, tmp_path: Path, namespace: str
) -> None:
    if existing_crds(k8s, KOPF_CRDS):
        pytest.skip("Kopf's peering CRDs exist already; this test installs them itself")
    release = f"ckpt-{namespace}"
    peering_name = f"{release}-ckpt-operator"
    # Our CRDs are the session's, not this release's (test_chart_crds.py installs them).
    settings = {"allowedRoots": ROOTS, "replicas": 2, "crds": {"install": False}}
    values = str(_values_file(tmp_path, settings))
    common = ["--namespace", namespace, "--kubeconfig", str(kubeconfig), "--values", values]
    custom = client.CustomObjectsApi(k8s)

    def peering_uid() -> str:
        obj = cast(
            dict[str, Any],
            custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering_name),
        )
        uid: str = obj["metadata"]["uid"]
        return uid

    try:
        installed = helm("install", release, str(CHART), *common)
        assert "Hot standby: 2 replicas" in installed.stdout
        # The peering object came from a post-install hook, after the CRDs were served.
        first = peering_uid()
        helm("upgrade", release, str(CHART), *common)
        # ...and the upgrade adopted it instead of recreating it (peers' keep-alives survive).
        assert peering_uid() == first
        manifest = helm("get", "manifest", release, *common[:4]).stdout
        assert f"kind: ClusterKopfPeering\nmetadata:\n  name: {peering_name}" in manifest
        apps = client.AppsV1Api(k8s)
        deployment = apps.read_namespaced_deployment(peering_name, namespace)
        assert deployment.spec.replicas == 2
        helm("uninstall", release, *common[:4], "--wait", "--timeout", "60s")
        with pytest.raises(ApiException) as gone:
            peering_uid()
        assert gone.value.status == 404
        # The shared CRDs stay for other Kopf operators.
        assert existing_crds(k8s, KOPF_CRDS) == set(KOPF_CRDS)
    finally:
        helm("uninstall", release, *common[:4], check=False)
        delete_crds_and_wait(k8s, list(KOPF_CRDS))


# --------------------------------------------------------------------------------------------
# the operator itself, running with nothing but the chart's RBAC


def _service_account_kubeconfig(
    k8s: Any, admin_kubeconfig: Path, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a bound token."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = client.CoreV1Api(k8s).create_namespaced_service_account_token(name, namespace, request)
    assert token.status is not None
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.status.token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _wait_for_phase(k8s: Any, namespace: str, name: str, log: Callable[[], str]) -> str:
    custom = client.CustomObjectsApi(k8s)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(
                "ckpt.dev", "v1alpha1", namespace, "trainingruns", name
            ),
        )
        phase = run.get("status", {}).get("phase")
        if phase:
            return str(phase)
        time.sleep(0.2)
    raise AssertionError(f"TrainingRun {namespace}/{name} got no status.phase; log:\n{log()}")


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced-hot-standby"])
def test_operator_runs_with_only_the_charts_rbac(
    helm: Helm,
    k8s: Any,
    kubeconfig: Path,
    tmp_path: Path,
    namespace: str,
    other_namespace: str,
    applied: Callable[[Manifest, str], None],
    mode: str,
) -> None:
    from ckpt_operator.testing.operator_process import OperatorProcess

    # The session's control plane holds our CRDs already; only Kopf's come from the chart.
    values: dict[str, Any] = {
        "allowedRoots": ["file:///tmp/ckpt-operator-demo/"],
        "crds": {"install": False},
    }
    if mode == "namespaced-hot-standby":
        values |= {"watchNamespaces": [other_namespace], "replicas": 2}
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, values)
    applied(manifest, namespace)
    crds = [obj for obj in manifest if obj["kind"] == "CustomResourceDefinition"]
    peerings = [obj for obj in manifest if obj["kind"] in PEERING_KINDS]
    if crds and existing_crds(k8s, KOPF_CRDS):
        pytest.skip("Kopf's peering CRDs exist already; this test installs them itself")
    container = only(manifest, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    peering_args = [arg for arg in container["args"] if arg.startswith("--peering=")]
    sa_kubeconfig = _service_account_kubeconfig(
        k8s, kubeconfig, namespace, _operator_sa(manifest), tmp_path / "sa-kubeconfig"
    )
    run = yaml.safe_load((REPO / "examples" / "trainingrun.yaml").read_text())
    operator = OperatorProcess(
        sa_kubeconfig,
        tmp_path / "operator.log",
        namespaces=values.get("watchNamespaces", ()),
        allowed_roots=values["allowedRoots"],
        extra_args=peering_args,
    )
    try:
        install_crds(kubeconfig, crds)
        if peerings:
            dyn = dynamic(k8s, tmp_path)
            for obj in peerings:
                create(dyn, obj, namespace, dry_run=False)
        with operator:
            client.CustomObjectsApi(k8s).create_namespaced_custom_object(
                "ckpt.dev", "v1alpha1", other_namespace, "trainingruns", run
            )
            phase = _wait_for_phase(
                k8s, other_namespace, run["metadata"]["name"], operator.log_text
            )
            assert phase
            if peerings:
                # Its keep-alive reached the peering object: peering RBAC works.
                peering = cast(
                    dict[str, Any],
                    client.CustomObjectsApi(k8s).get_namespaced_custom_object(
                        "kopf.dev",
                        "v1",
                        other_namespace,
                        "kopfpeerings",
                        peerings[0]["metadata"]["name"],
                    ),
                )
                assert peering.get("status"), "the operator never announced itself as a peer"
        log = operator.log_text()
        # Drop each line's "[date time,msec]" prefix: a millisecond field can read 403. A port
        # can too (":40313"), so the status must stand alone as a number.
        messages = [line.split("]", 1)[-1] for line in log.splitlines()]
        refused = [
            line
            for line in messages
            if (
                re.search(r"(?<!\d)403(?!\d)", line)
                or "Forbidden" in line
                or "permission" in line.lower()
            )
            # A cluster-wide operator sees other tests' namespaces while they terminate:
            # the API server refuses new Events there, which is not an RBAC refusal.
            and "NamespaceTerminating" not in line
        ]
        assert not refused, "the operator was refused something:\n" + "\n".join(refused)
    finally:
        # Its finalizers would otherwise hold the namespace: let the run go while it is gone.
        _drop_finalizers(k8s, other_namespace)
        delete_crds_and_wait(k8s, [crd["metadata"]["name"] for crd in crds])


def _drop_finalizers(k8s: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(k8s)
    for plural in ("trainingruns", "checkpoints"):
        items = cast(
            dict[str, Any],
            custom.list_namespaced_custom_object("ckpt.dev", "v1alpha1", namespace, plural),
        )["items"]
        for item in items:
            if item["metadata"].get("finalizers"):
                custom.patch_namespaced_custom_object(
                    "ckpt.dev",
                    "v1alpha1",
                    namespace,
                    plural,
                    item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )
