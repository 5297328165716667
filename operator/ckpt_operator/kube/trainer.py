"""The trainer pod of one attempt, built from the run's template: a pure builder.

Kept apart from the state machine that decides *when* an attempt starts
(:mod:`ckpt_operator.policy.attempts`) and from the handler that sends the pod: this module
only knows what the pod looks like.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.kube.objects import owner_reference
from ckpt_operator.policy.resume import ResumePlan
from ckpt_operator.storage import layout


def validate_template(template: Mapping[str, Any]) -> str | None:
    """What the CRD schema cannot check about the template, as a message; None when fine."""
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        return "template.spec must be a pod spec"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "template.spec.containers must list at least one container"
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"template.spec.containers[{index}]"
        if not isinstance(container, Mapping):
            return f"{where} must be an object"
        name = container.get("name")
        if not isinstance(name, str) or not name:
            return f"{where}.name is required"
        if name in seen:
            return f"{where}.name {name!r} is used twice"
        seen.add(name)
        image = container.get("image")
        if not isinstance(image, str) or not image:
            return f"{where}.image is required"
        env = container.get("env", [])
        if not isinstance(env, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in env
        ):
            return f"{where}.env must be a list of {{name, value}} objects"
    return None


def attempt_env(
    run: str, namespace: str, attempt: int, store_root: str, plan: ResumePlan
) -> list[dict[str, Any]]:
    """The env contract (docs/design.md) for the first container."""
    target = plan.target
    uris = [layout.join_uri(store_root, c.path) for c in plan.candidates]
    env: list[dict[str, Any]] = [
        {"name": names.ENV_RUN, "value": run},
        {"name": names.ENV_NAMESPACE, "value": namespace},
        {"name": names.ENV_ATTEMPT, "value": str(attempt)},
        {"name": names.ENV_STORE, "value": store_root},
        {"name": names.ENV_RESUME_FROM, "value": uris[0] if uris else ""},
        {"name": names.ENV_RESUME_STEP, "value": str(target.step) if target else ""},
        {"name": names.ENV_RESUME_CANDIDATES, "value": json.dumps(uris)},
    ]
    for name, path in (
        (names.ENV_POD_NAME, "metadata.name"),
        (names.ENV_POD_NAMESPACE, "metadata.namespace"),
    ):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env


def build_pod(
    *,
    run: str,
    namespace: str,
    run_uid: str,
    template: Mapping[str, Any],
    attempt: int,
    store_root: str,
    plan: ResumePlan,
) -> dict[str, Any]:
    """The pod of one attempt: the template, our name, labels, owner, env and ``Never``.

    ``restartPolicy`` is forced to ``Never``: the operator restarts attempts (with a resume
    point), not the kubelet (which would rerun the container from its old env). Our env comes
    first so the template's own variables may refer to it as ``$(CKPT_STORE)``.
    """
    tmeta = template.get("metadata") or {}
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec["restartPolicy"] = "Never"
    containers = [dict(c) for c in spec.get("containers") or []]
    ours = attempt_env(run, namespace, attempt, store_root, plan)
    if containers:
        kept = [e for e in containers[0].get("env") or [] if e.get("name") not in names.ATTEMPT_ENV]
        containers[0]["env"] = ours + kept
    spec["containers"] = containers
    target = plan.target
    annotations = {
        **(tmeta.get("annotations") or {}),
        names.ANNOTATION_RESUME_FROM: target.name if target else "",
        names.ANNOTATION_RESUME_STEP: str(target.step) if target else "",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.attempt_pod_name(run, attempt),
            "namespace": namespace,
            "labels": {
                **(tmeta.get("labels") or {}),
                names.LABEL_RUN: run,
                names.LABEL_ATTEMPT: str(attempt),
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(run, run_uid, block_deletion=True)],
        },
        "spec": spec,
    }
