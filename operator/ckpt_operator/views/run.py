"""The view of a TrainingRun that checkpoint deletion, retention and maintenance read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ckpt_operator.api.models import LabelSelector, Retention
from ckpt_operator.views import fields

RunKey = tuple[str, str]
"""``(namespace, run name)``: how indexes and wake-ups key a run."""

DEFAULT_REPORT_TIMEOUT_S = 600.0
LIVE_ATTEMPT_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True)
class RunView:
    """What deletion and retention need to know about a TrainingRun."""

    name: str
    namespace: str = ""
    uid: str = ""
    store_uri: str = ""
    secret_name: str | None = None
    selector: Mapping[str, Any] | None = None
    report_timeout_s: float = DEFAULT_REPORT_TIMEOUT_S
    retention: Mapping[str, Any] | None = None
    verify: str = "full"
    resume_targets: frozenset[str] = frozenset()
    """Checkpoints a pending or running attempt resumes from."""
    terminating: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunView:
        """Never raises: a selector or retention the models refuse reads as unset (the default
        consumer label; nothing expires), a bad timeout as the default."""
        meta, spec = fields.mapping(body.get("metadata")), fields.mapping(body.get("spec"))
        status = fields.mapping(body.get("status"))
        store = fields.mapping(spec.get("store"))
        consumers = fields.mapping(spec.get("consumers"))
        targets = frozenset(
            name
            for a in fields.objects(status.get("attempts"))
            if fields.text(a.get("phase"), "Pending") in LIVE_ATTEMPT_PHASES
            and (name := fields.text(fields.mapping(a.get("resumedFrom")).get("name")))
        )
        timeout = fields.number(consumers.get("reportTimeoutSeconds"))
        return cls(
            name=fields.text(meta.get("name")),
            namespace=fields.text(meta.get("namespace")),
            uid=fields.text(meta.get("uid")),
            store_uri=fields.text(store.get("uri")),
            secret_name=fields.optional_text(fields.mapping(store.get("secretRef")).get("name")),
            selector=_valid(LabelSelector, consumers.get("selector")),
            report_timeout_s=timeout if timeout and timeout > 0 else DEFAULT_REPORT_TIMEOUT_S,
            retention=_valid(Retention, spec.get("retention")),
            verify=fields.text(spec.get("verify"), "full"),
            resume_targets=targets,
            terminating=bool(meta.get("deletionTimestamp")),
        )


def _valid(model: type[BaseModel], value: Any) -> Mapping[str, Any] | None:
    """``value`` when ``model`` accepts it, else None."""
    if value is None:
        return None
    try:
        model.model_validate(value)
    except ValidationError:
        return None
    return fields.mapping(value)
