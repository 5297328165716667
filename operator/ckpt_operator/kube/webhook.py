"""What the admission webhook registers and what it changes in a pod of an attached run.

The chart renders the same webhook entry in ``templates/webhook.yaml`` (a test compares the two),
so the operator's local mode and a Helm install select, time out and fail alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.policy.resume import Resume


def object_selector() -> dict[str, Any]:
    """Opted-in pods only: labelled ``ckpt.dev/run``, and not the operator's own attempt pods
    (those carry ``ckpt.dev/attempt`` from creation, so no webhook stands in their way)."""
    return {
        "matchExpressions": [
            {"key": names.LABEL_RUN, "operator": "Exists"},
            {"key": names.LABEL_ATTEMPT, "operator": "DoesNotExist"},
        ]
    }


def namespace_selector() -> dict[str, Any]:
    """Namespaces labelled ``ckpt.dev/webhook: enabled`` only."""
    return {"matchLabels": {names.LABEL_WEBHOOK: names.WEBHOOK_ENABLED}}


def mutating_webhook(
    client_config: Mapping[str, Any], *, failure_policy: str = "Ignore", timeout_s: int = 5
) -> dict[str, Any]:
    """The one webhook entry: pod CREATE in opted-in namespaces, for opted-in pods.

    ``sideEffects: NoneOnDryRun``: opening an attempt writes the run's status (skipped on dry
    runs). ``reinvocationPolicy: Never``: once injected a pod carries ``ckpt.dev/attempt`` and no
    longer matches the object selector, so a second call could change nothing.
    """
    return {
        "name": names.WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "clientConfig": dict(client_config),
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": namespace_selector(),
        "objectSelector": object_selector(),
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": timeout_s,
        "reinvocationPolicy": "Never",
    }


def configuration(name: str, webhook: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ckpt-operator"}},
        "webhooks": [dict(webhook)],
    }


def injected_containers(
    containers: Sequence[Mapping[str, Any]], env: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every container gets ``env`` first (so the template's own variables may refer to it as
    ``$(CKPT_STORE)``); the template's variables of the same names are replaced.

    Every container, not only the first: the trainer of a pod another controller builds need
    not come first (a launcher, a sidecar), and the variables are inert elsewhere.
    """
    ours = {e["name"] for e in env}
    result = []
    for container in containers:
        kept = [e for e in container.get("env") or [] if e.get("name") not in ours]
        result.append({**container, "env": [*env, *kept]})
    return result


def resume_annotations(resume: Resume) -> dict[str, str]:
    """The annotations attempt pods carry (as the operator's own pods do)."""
    target = resume.target
    return {
        names.ANNOTATION_RESUME_FROM: target.name if target else "",
        names.ANNOTATION_RESUME_STEP: str(target.step) if target else "",
    }
