"""The view of a pod being admitted for an attached run (``spec.workload``), read once.

Admission sees the pod before it exists: it may have no name yet (``generateName``), and what
ties it to its run and to its workload's restarts is in its labels, annotations and owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpt_operator.api import names
from ckpt_operator.views.pod import completion_index


@dataclass(frozen=True)
class AdmittedPod:
    """A pod labelled ``ckpt.dev/run`` as the API server is about to create it."""

    run: str
    namespace: str
    name: str = ""
    generate_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owner_uid: str = ""
    """Its controller's uid (the Job); empty for a bare pod."""
    completion_index: int | None = None
    restart_policy: str = "Always"
    containers: int = 0

    @property
    def display_name(self) -> str:
        """Its name, or its ``generateName`` prefix while the API server has not chosen one."""
        return self.name or self.generate_name

    @classmethod
    def from_body(cls, body: Mapping[str, Any], namespace: str) -> AdmittedPod:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
        owner: Mapping[str, Any] = owners[0] if owners else {}
        return cls(
            run=labels.get(names.LABEL_RUN, ""),
            namespace=str(meta.get("namespace") or namespace),
            name=str(meta.get("name") or ""),
            generate_name=str(meta.get("generateName") or ""),
            labels=labels,
            owner_uid=str(owner.get("uid") or ""),
            completion_index=completion_index(meta),
            restart_policy=str(spec.get("restartPolicy") or "Always"),
            containers=len(spec.get("containers") or []),
        )
