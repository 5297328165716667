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
    max_preemptions: int | None = Field(
        default=100,
        ge=0,
        description="Restarts after failures an Ignore rule matched (preemptions, evictions); "
        "past it the run fails (PreemptionBudgetExhausted). Unset: unlimited.",
    )
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


class Workload(Model):
    """Pods another controller creates (a Job, a JobSet, a TrainJob): the run attaches to them.

    A pod opts in with the label ``ckpt.dev/run: <run>`` in its template; the admission
    webhook then gives it the ``CKPT_*`` environment at creation (docs/attach.md).
    """

    selector: LabelSelector | None = Field(
        default=None,
        description="Narrows which pods labelled ckpt.dev/run=<run> are the run's workers; "
        "default: all of them. Opted-in pods that do not match are refused.",
    )
    attempt_label: str | None = Field(
        default=None,
        min_length=1,
        max_length=317,
        description="Pod label numbering the workload controller's restarts: pods with the "
        "same value form one attempt (default: jobset.sigs.k8s.io/restart-attempt when the pod "
        "has it). Without one, a pod replacing an earlier pod of the same Job index starts a "
        "new attempt.",
    )


class TrainingRunSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.template) != has(self.workload)",
                "set exactly one of spec.template (the operator creates the pods) and "
                "spec.workload (the run attaches to pods another controller creates)",
            ),
            (
                "has(self.template) || self.numNodes == 1",
                "spec.numNodes applies to runs with a template; a workload sizes itself",
            ),
            (
                "has(self.workload) == has(oldSelf.workload)",
                "a run cannot switch between spec.template and spec.workload",
            ),
        )
    )

    template: PodTemplate | None = Field(
        default=None, description="The trainer pod the operator creates for every attempt."
    )
    workload: Workload | None = Field(
        default=None,
        description="Attach to pods another controller creates instead of creating them: "
        "restarts stay that controller's, resume points, status and GC are the operator's.",
    )
    store: Store
    num_nodes: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Worker pods per attempt: a gang. The first failed worker fails the "
        "attempt, the others are deleted, and the next attempt starts once all are gone.",
    )
    master_port: int = Field(
        default=29500,
        ge=1,
        le=65535,
        description="Rendezvous port of node 0 (MASTER_PORT, PET_MASTER_PORT) for numNodes > 1.",
    )
    startup_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail an attempt (reason StartupTimeout, through the rules) whose workers "
        "are not all running this long after it started; unset waits forever (queued gangs).",
    )
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    retention: Retention | None = None
    consumers: Consumers = Field(default_factory=Consumers)
    verify: Literal["size", "full"] = "full"


class CheckpointRef(Model):
    name: str
    step: int = Field(ge=0)
    attempt: int = Field(ge=0)
    uri: str


class WorkerStatus(Model):
    """One worker of a multi-node attempt, as it was when the attempt ended."""

    rank: int = Field(ge=0)
    pod: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown", "Missing"]
    exit_code: int | None = None
    reason: str | None = None


class AttemptStatus(Model):
    attempt: int = Field(ge=0)
    pod: str = Field(description="The attempt's pod; of a gang, the worker that decided it.")
    start_time: datetime | None = None
    end_time: datetime | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    action: Literal["Retry", "FailRun", "Ignore"] | None = None
    resumed_from: CheckpointRef | None = None
    workers: list[WorkerStatus] | None = Field(
        default=None, description="Every worker's outcome (numNodes > 1), once the attempt ended."
    )
    key: str | None = Field(
        default=None,
        max_length=1024,
        description="Attached runs: what groups the workload's pods into this attempt.",
    )


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
    preemptions: int = Field(
        default=0, ge=0, description="Restarts after failures an Ignore rule matched."
    )
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
    format: Literal["dir", "tar"] = Field(default="dir", json_schema_extra=_immutable("format"))
    kind: Literal["full", "weights"] = "full"
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
