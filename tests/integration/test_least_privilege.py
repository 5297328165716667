"""Least privilege, both ways: every chart role grants exactly what its code calls.

The SDK's needs are derived from the code: ``sdk/registry.py`` is the only place the SDK calls
the API server, so the calls each ``KubeRegistry`` method makes (helpers followed) are read
from its syntax tree, and the trainer's and consumer's needs are the methods ``manager.py`` and
``consumer.py`` call. The operator's needs (Kopf's implicit watches, events and patches
included) are the table of ``test_chart.py``, kept next to the code it describes. A grant
nobody uses fails, and so does a call nobody grants.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from ckpt_operator.api import names
from tests.integration.test_chart import (
    OPERATOR_CLUSTER_NEEDS,
    OPERATOR_NAMESPACED_NEEDS,
    ROOTS,
    Helm,
    Rule,
    render,
)

pytestmark = pytest.mark.integration

SDK = Path(__file__).resolve().parents[2] / "operator" / "ckpt_operator" / "sdk"
Grant = tuple[str, str, str]
"""(API group, resource or resource/subresource, verb)."""

_CUSTOM = re.compile(r"(get|list|create|patch|delete|replace)_namespaced_custom_object(_status)?")
_CORE = re.compile(r"(read|list|create|patch|delete|replace)_namespaced_([a-z_]+)")
_VERBS = {"read": "get", "replace": "update"}


def _self_attr(node: ast.AST, *path: str) -> str | None:
    """``name`` for ``self.<path...>.name`` (a method or attribute reached through ``self``)."""
    if not isinstance(node, ast.Attribute):
        return None
    value: ast.expr = node.value
    for part in reversed(path):
        if not (isinstance(value, ast.Attribute) and value.attr == part):
            return None
        value = value.value
    return node.attr if isinstance(value, ast.Name) and value.id == "self" else None


def _api_call(call: ast.Call, method: str, client: str) -> Grant:
    if client == "_custom":
        match = _CUSTOM.fullmatch(method)
        assert match, f"unknown custom-objects call {method}"
        plural = call.args[3]
        assert isinstance(plural, ast.Attribute), f"{method}: plural is not a names constant"
        resource = getattr(names, plural.attr) + ("/status" if match[2] else "")
        return names.GROUP, resource, _VERBS.get(match[1], match[1])
    match = _CORE.fullmatch(method)
    assert match, f"unknown core call {method}"
    return "", f"{match[2]}s", _VERBS.get(match[1], match[1])


def registry_calls() -> dict[str, set[Grant]]:
    """Each ``KubeRegistry`` method → the API calls it makes, its own helpers followed."""
    tree = ast.parse((SDK / "registry.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeRegistry"]
    direct: dict[str, set[Grant]] = {}
    helpers: dict[str, set[str]] = {}
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        direct[fn.name], helpers[fn.name] = set(), set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            for client in ("_custom", "_core"):
                method = _self_attr(node.func, client)
                if method:
                    direct[fn.name].add(_api_call(node, method, client))
            helper = _self_attr(node.func)
            if helper:
                helpers[fn.name].add(helper)

    def closure(name: str, seen: frozenset[str] = frozenset()) -> set[Grant]:
        found = set(direct.get(name, set()))
        for helper in helpers.get(name, set()) - seen:
            found |= closure(helper, seen | {name})
        return found

    return {name: closure(name) for name in direct}


def _registry_method(node: ast.AST) -> str | None:
    """``name`` for any ``<expr>.registry.name`` (``self.registry``, ``manager.registry``)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
        return node.attr if node.value.attr == "registry" else None
    return None


def sdk_needs(side: str) -> set[Grant]:
    """What the registry methods called on one side of the SDK need: ``consumer`` is
    ``sdk/consumer.py``; ``trainer`` is every other SDK module (the registry's own aside)."""
    paths = (
        [SDK / "consumer.py"]
        if side == "consumer"
        else [p for p in SDK.glob("*.py") if p.name not in ("consumer.py", "registry.py")]
    )
    calls = registry_calls()
    used = {
        method
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if (method := _registry_method(node)) and method in calls
    }
    assert used, f"the {side} calls no registry method: is the derivation stale?"
    return set().union(*(calls[method] for method in used))


def expand(rules: list[Rule]) -> set[Grant]:
    return {(group, resource, verb) for group, resource, verbs in rules for verb in verbs}


def granted(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _roles(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    manifest = render(helm, tmp_path, "lp", "ops", {"allowedRoots": ROOTS, **values})
    return {
        f"{obj['kind']}/{obj['metadata']['name'].removeprefix('lp-ckpt-operator')}": obj["rules"]
        for obj in manifest
        if obj["kind"] in ("ClusterRole", "Role")
    }


def _compare(role: str, grants: set[Grant], needs: set[Grant]) -> list[str]:
    return [f"{role} grants {g} that nothing calls" for g in sorted(grants - needs)] + [
        f"{role} lacks {n} that the code calls" for n in sorted(needs - grants)
    ]


def test_the_sdk_derivation_sees_the_calls() -> None:
    """Guard the derivation itself: it finds what we know the SDK does."""
    calls = registry_calls()
    assert (names.GROUP, names.CHECKPOINTS, "create") in calls["register"]
    assert (names.GROUP, names.TRAINING_RUNS, "get") in calls["register"]  # via _run_uid
    assert calls["annotate_pod"] == {("", "pods", "patch")}


def test_trainer_and_consumer_roles_grant_exactly_what_the_sdk_calls(
    helm: Helm, tmp_path: Path
) -> None:
    roles = _roles(helm, tmp_path, {})
    wrong = _compare("trainer", granted(roles["ClusterRole/-trainer"]), sdk_needs("trainer"))
    wrong += _compare("consumer", granted(roles["ClusterRole/-consumer"]), sdk_needs("consumer"))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("cluster_wide", [True, False], ids=["cluster-wide", "namespaced"])
def test_operator_roles_grant_exactly_what_the_operator_needs(
    helm: Helm, tmp_path: Path, cluster_wide: bool
) -> None:
    roles = _roles(helm, tmp_path, {} if cluster_wide else {"watchNamespaces": ["ml"]})
    namespaced = expand(OPERATOR_NAMESPACED_NEEDS)
    cluster = expand(OPERATOR_CLUSTER_NEEDS)
    if cluster_wide:
        wrong = _compare("ClusterRole", granted(roles["ClusterRole/"]), namespaced | cluster)
    else:
        # Kopf restricted to namespaces lists and watches them.
        kopf = {("", "namespaces", "list"), ("", "namespaces", "watch")}
        wrong = _compare("ClusterRole", granted(roles["ClusterRole/"]), cluster | kopf)
        wrong += _compare("Role", granted(roles["Role/"]), namespaced)
    assert not wrong, "\n".join(wrong)
