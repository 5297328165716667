"""The TrainingRun and Checkpoint resources as pydantic models: the one source of their schema.

``crdgen`` turns these models into the CRD YAML under ``crds/`` and the Helm chart; a test fails
when the committed YAML drifts from them. Handlers parse ``spec``/``status`` with the same models,
so a field exists in exactly one place. Cross-field and transition rules that the API server must
enforce at admission are CEL ``x-kubernetes-validations`` attached with ``_cel``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

CEL = "x-kubernetes-validations"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra holding CEL rules as (rule, message) pairs."""
    return {CEL: [{"rule": rule, "message": message} for rule, message in rules]}


def _immutable(field: str) -> dict[str, Any]:
    return _cel(("self == oldSelf", f"{field} is immutable"))


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields rejected in tests."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class OpenObject(BaseModel):
    """Base for Kubernetes objects embedded as-is: fields not modelled here pass through."""

    model_config = ConfigDict(extra="allow")


# --- shared ---------------------------------------------------------------------------------


class Condition(Model):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(min_length=1)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: datetime | None = None


class SecretRef(Model):
    name: str = Field(min_length=1, max_length=253)


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Model):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


# --- TrainingRun ----------------------------------------------------------------------------


class Container(OpenObject):
    """A core/v1 Container; its fields are checked by the API server when the pod is created."""


class PodSpecTemplate(OpenObject):
    """The trainer pod spec (core/v1 PodSpec); only containers is checked at admission."""

    containers: list[Container] = Field(
        min_length=1, description="Trainer containers; the first one receives the CKPT_* env."
    )


class PodTemplate(OpenObject):
    """A PodTemplateSpec for the trainer pod of every attempt."""

    spec: PodSpecTemplate


class Store(Model):
    uri: str = Field(
        max_length=1024,
        pattern=r"^(file:///|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$))",
        description="Root of the run's checkpoints: file:///abs/path or s3://bucket/prefix.",
        json_schema_extra=_cel(
            (
                "!self.matches('(^|/)[.][.]?(/|$)')",
                "uri must not contain '.' or '..' segments",
            )
        ),
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with s3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "optional AWS_ENDPOINT_URL, AWS_REGION).",
    )


class Backoff(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.maxSeconds >= self.initialSeconds", "maxSeconds must be >= initialSeconds")
        )
    )

    initial_seconds: float = Field(default=10, ge=0)
    max_seconds: float = Field(default=300, ge=0)


class ExitCodeMatch(Model):
    operator: Literal["In", "NotIn"]
    values: list[int] = Field(min_length=1, max_length=255)


class FailureRule(Model):
    """Like a Job podFailurePolicy rule: the first matching rule decides a failed attempt."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.onExitCodes) != has(self.onReasons)",
                "a rule sets exactly one of onExitCodes and onReasons",
            )
        )
    )

    action: Literal["Retry", "FailRun", "Ignore"] = Field(
        description="Retry spends one restart; FailRun fails the run now; Ignore restarts "
        "without spending the budget (e.g. preemption, eviction)."
    )
    on_exit_codes: ExitCodeMatch | None = None
    on_reasons: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Pod or container termination reasons, e.g. OOMKilled, Evicted, "
        "Preempted, DeadlineExceeded, DisruptionTarget.",
    )


class RestartPolicy(Model):
    max_restarts: int = Field(default=3, ge=0, description="Restarts that count against budget.")
    backoff: Backoff = Field(default_factory=Backoff)
    rules: list[FailureRule] = Field(default_factory=list)
    max_attempts_without_progress: int | None = Field(
        default=None,
        ge=1,
        description="Fail the run when this many consecutive attempts produced no new Ready "
        "checkpoint; unset disables the rule.",
    )


class KeepBest(Model):
    metric: str = Field(min_length=1)
    mode: Literal["min", "max"] = "min"
    count: int = Field(default=1, ge=1)


class Retention(Model):
    keep_last: int | None = Field(default=None, ge=1)
    keep_every: int | None = Field(default=None, ge=1, description="Keep steps divisible by this.")
    keep_best: KeepBest | None = None
    max_bytes: int | None = Field(default=None, ge=0)


class Consumers(Model):
    selector: LabelSelector | None = Field(
        default=None,
        description="Consumer pods; default: label ckpt.dev/consumer-of=<run name>.",
    )
    report_timeout_seconds: int = Field(default=600, ge=1)


class TrainingRunSpec(Model):
    template: PodTemplate
    store: Store
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    retention: Retention | None = None
    consumers: Consumers = Field(default_factory=Consumers)
    verify: Literal["size", "full"] = "full"


class CheckpointRef(Model):
    name: str
    step: int = Field(ge=0)
    attempt: int = Field(ge=0)
    uri: str


class AttemptStatus(Model):
    attempt: int = Field(ge=0)
    pod: str
    start_time: datetime | None = None
    end_time: datetime | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    action: Literal["Retry", "FailRun", "Ignore"] | None = None
    resumed_from: CheckpointRef | None = None


class TrainingRunStatus(Model):
    phase: Literal["Pending", "Running", "BackingOff", "Succeeded", "Failed"] | None = None
    attempt: int | None = Field(default=None, ge=0)
    attempts: list[AttemptStatus] = Field(default_factory=list)
    latest_checkpoint: CheckpointRef | None = None
    restarts: int = Field(
        default=0,
        ge=0,
        description="Restarts spent from maxRestarts; Ignore-rule restarts are not counted "
        "(see attempt).",
    )
    attempts_without_progress: int = Field(default=0, ge=0)
    next_attempt_after: datetime | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)


# --- Checkpoint -----------------------------------------------------------------------------


class CheckpointSpec(Model):
    run: str = Field(
        min_length=1,
        max_length=63,
        description="Owning TrainingRun.",
        json_schema_extra=_immutable("run"),
    )
    step: int = Field(ge=0, json_schema_extra=_immutable("step"))
    attempt: int = Field(ge=0, json_schema_extra=_immutable("attempt"))
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="Location relative to the run's store root.",
        json_schema_extra=_cel(
            ("self == oldSelf", "path is immutable"),
            ("!self.startsWith('/')", "path must be relative to the run's store root"),
            ("!self.matches('(^|/)[.][.](/|$)')", "path must not contain '..' segments"),
            ("!self.contains('://')", "path must be relative, not a URI"),
        ),
    )
    format: Literal["dir", "tar", "dcp"] = Field(
        default="dir",
        description="dir, tar, or dcp (a torch.distributed.checkpoint directory).",
        json_schema_extra=_immutable("format"),
    )
    kind: Literal["full", "weights"] = "full"
    world_size: int | None = Field(
        default=None,
        ge=1,
        description="Processes that wrote a distributed checkpoint; unset: one process.",
        json_schema_extra=_immutable("worldSize"),
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        description="Files holding the state's shards (per rank, or DCP .distcp files).",
        json_schema_extra=_immutable("shards"),
    )
    metrics: dict[str, float] | None = Field(
        default=None, description="Metrics recorded at save time (used by retention keepBest)."
    )


class CheckpointStatus(Model):
    phase: Literal["Pending", "Ready", "Invalid", "Deleting"] | None = None
    message: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    digest: str | None = None
    verified_at: datetime | None = None
    blocked_by: list[str] | None = Field(
        default=None, description="What holds deletion back (consumers, resume targets, …)."
    )
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)
