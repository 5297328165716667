"""The workers of one attempt, built from the run's template, and the run's Service.

Kept apart from the state machine that decides *when* an attempt starts
(:mod:`ckpt_operator.policy.attempts`) and from the handler that sends the pod: this module
only knows what the pod looks like.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.kube.objects import owner_reference
from ckpt_operator.policy.resume import Resume


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
    run: str, namespace: str, attempt: int, store_root: str, resume: Resume
) -> list[dict[str, Any]]:
    """The env contract (docs/design.md) for the first container."""
    target = resume.target
    env: list[dict[str, Any]] = [
        {"name": names.ENV_RUN, "value": run},
        {"name": names.ENV_NAMESPACE, "value": namespace},
        {"name": names.ENV_ATTEMPT, "value": str(attempt)},
        {"name": names.ENV_STORE, "value": store_root},
        {"name": names.ENV_RESUME_FROM, "value": target.uri if target else ""},
        {"name": names.ENV_RESUME_STEP, "value": str(target.step) if target else ""},
        {"name": names.ENV_RESUME_CANDIDATES, "value": json.dumps(list(resume.candidates))},
    ]
    for name, path in (
        (names.ENV_POD_NAME, "metadata.name"),
        (names.ENV_POD_NAMESPACE, "metadata.namespace"),
    ):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env


def hostname(pod: str) -> str:
    """The pod's hostname: its name, shortened to a DNS label (63) when longer."""
    if len(pod) <= 63:
        return pod
    return f"{pod[:54]}-{hashlib.sha256(pod.encode()).hexdigest()[:8]}"


def torchrun_env(
    run: str, namespace: str, attempt: int, rank: int, num_nodes: int, port: int
) -> list[dict[str, Any]]:
    """torchrun's rendezvous environment, as Kubeflow's PyTorchJob sets it: node 0 is reached
    through the run's headless Service (``<pod>.<run>.<namespace>.svc``)."""
    master = hostname(names.attempt_pod_name(run, attempt, 0, num_nodes))
    address = f"{master}.{run}.{namespace}.svc"
    values = {
        names.ENV_PET_NNODES: str(num_nodes),
        names.ENV_PET_NODE_RANK: str(rank),
        names.ENV_PET_MASTER_ADDR: address,
        names.ENV_PET_MASTER_PORT: str(port),
        names.ENV_MASTER_ADDR: address,
        names.ENV_MASTER_PORT: str(port),
    }
    return [{"name": k, "value": v} for k, v in values.items()]


KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"


def build_pod(
    *,
    run: str,
    namespace: str,
    run_uid: str,
    template: Mapping[str, Any],
    attempt: int,
    store_root: str,
    resume: Resume,
    rank: int = 0,
    num_nodes: int = 1,
    master_port: int = 29500,
) -> dict[str, Any]:
    """One worker of an attempt: the template, our name, labels, owner, env and ``Never``.

    ``restartPolicy`` is forced to ``Never``: the operator restarts attempts (with a resume
    point), not the kubelet (which would rerun the container from its old env). Our env comes
    first so the template's own variables may refer to it as ``$(CKPT_STORE)``. Everything
    else passes through (scheduler name, queue labels, tolerations, resources), so gang
    admission by Kueue or Volcano works; a gang queued by Kueue is one pod group per attempt.
    """
    tmeta = template.get("metadata") or {}
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec["restartPolicy"] = "Never"
    name = names.attempt_pod_name(run, attempt, rank, num_nodes)
    labels = {
        **(tmeta.get("labels") or {}),
        names.LABEL_RUN: run,
        names.LABEL_ATTEMPT: str(attempt),
        names.LABEL_NODE_RANK: str(rank),
    }
    target = resume.target
    annotations = {
        **(tmeta.get("annotations") or {}),
        names.ANNOTATION_RESUME_FROM: target.name if target else "",
        names.ANNOTATION_RESUME_STEP: str(target.step) if target else "",
    }
    ours = attempt_env(run, namespace, attempt, store_root, resume)
    if num_nodes > 1:
        ours += torchrun_env(run, namespace, attempt, rank, num_nodes, master_port)
        spec["hostname"], spec["subdomain"] = hostname(name), run
        if KUEUE_QUEUE in labels:
            labels.setdefault(KUEUE_GROUP, f"{run}-attempt-{attempt}")
            annotations.setdefault(KUEUE_GROUP_COUNT, str(num_nodes))
    containers = [dict(c) for c in spec.get("containers") or []]
    if containers:
        ours_names = {e["name"] for e in ours}
        kept = [e for e in containers[0].get("env") or [] if e.get("name") not in ours_names]
        containers[0]["env"] = ours + kept
    spec["containers"] = containers
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(run, run_uid, block_deletion=True)],
        },
        "spec": spec,
    }


def build_service(*, run: str, namespace: str, run_uid: str) -> dict[str, Any]:
    """The run's headless Service: gives workers the DNS names the rendezvous uses, and
    publishes them before they are ready (node 0 must be reachable while it starts)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": run,
            "namespace": namespace,
            "labels": {names.LABEL_RUN: run},
            "ownerReferences": [owner_reference(run, run_uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_RUN: run},
        },
    }
