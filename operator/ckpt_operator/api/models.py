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
    reason: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase, for machines.",
    )
    message: str = Field(default="", description="For people.")
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )


class SecretRef(Model):
    name: str = Field(min_length=1, max_length=253, description="A Secret in the run's namespace.")


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
    """Where the run's checkpoints live; it must lie under one of the operator's allowed roots."""

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
    """Delay before a restart: min(maxSeconds, initialSeconds * 2^restarts); 0 restarts at once."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.maxSeconds >= self.initialSeconds", "maxSeconds must be >= initialSeconds")
        )
    )

    initial_seconds: float = Field(default=10, ge=0)
    max_seconds: float = Field(default=300, ge=0)


class ExitCodeMatch(Model):
    operator: Literal["In", "NotIn"] = Field(
        description="In: a non-zero exit code is one of values; NotIn: one is none of them."
    )
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
    """What happens when an attempt fails."""

    max_restarts: int = Field(default=3, ge=0, description="Restarts that count against budget.")
    max_preemptions: int | None = Field(
        default=100,
        ge=0,
        description="Restarts after failures an Ignore rule matched (preemptions, evictions); "
        "past it the run fails (PreemptionBudgetExhausted). Unset: unlimited.",
    )
    backoff: Backoff = Field(default_factory=Backoff)
    rules: list[FailureRule] = Field(
        default_factory=list,
        description="The first rule matching a failed attempt decides; no match: Retry.",
    )
    max_attempts_without_progress: int | None = Field(
        default=None,
        ge=1,
        description="Fail the run when this many consecutive attempts produced no new Ready "
        "checkpoint; unset disables the rule.",
    )


class KeepBest(Model):
    """Keep the ``count`` best checkpoints by a metric recorded at save time."""

    metric: str = Field(min_length=1, description="A key of the Checkpoints' spec.metrics.")
    mode: Literal["min", "max"] = Field(default="min", description="min: lower is better.")
    count: int = Field(default=1, ge=1)


class Retention(Model):
    """Which Ready checkpoints to keep. With any keep rule set, the others expire; maxBytes then
    caps the total, oldest first. The newest Ready checkpoint and resume targets never expire,
    and an expired checkpoint's storage still waits for its consumers."""

    keep_last: int | None = Field(default=None, ge=1, description="Keep the newest N.")
    keep_every: int | None = Field(default=None, ge=1, description="Keep steps divisible by this.")
    keep_best: KeepBest | None = None
    max_bytes: int | None = Field(
        default=None, ge=0, description="Cap on the total size of the checkpoints kept."
    )


class Consumers(Model):
    """Pods that load this run's checkpoints: storage stays until they have moved past it."""

    selector: LabelSelector | None = Field(
        default=None,
        description="Consumer pods; default: label ckpt.dev/consumer-of=<run name>.",
    )
    report_timeout_seconds: int = Field(
        default=600,
        ge=1,
        description="A consumer that has not reported for this long stops blocking (and is "
        "flagged).",
    )


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
    """A training job whose attempts resume from the newest valid checkpoint of any attempt."""

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
    verify: Literal["size", "full"] = Field(
        default="full",
        description="How new checkpoints are checked against their manifest: file sizes, or "
        "sizes and checksums.",
    )


class CheckpointRef(Model):
    name: str = Field(description="The Checkpoint object.")
    step: int = Field(ge=0)
    attempt: int = Field(ge=0, description="The attempt that wrote it.")
    uri: str = Field(description="Where it lies in the store.")


class WorkerStatus(Model):
    """One worker of a multi-node attempt, as it was when the attempt ended."""

    rank: int = Field(ge=0)
    pod: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown", "Missing"]
    exit_code: int | None = None
    reason: str | None = None


class AttemptStatus(Model):
    """One attempt: its pod(s), how it ended and what the restart rules made of it."""

    attempt: int = Field(ge=0)
    pod: str = Field(description="The attempt's pod; of a gang, the worker that decided it.")
    start_time: datetime | None = None
    end_time: datetime | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    action: Literal["Retry", "FailRun", "Ignore"] | None = Field(
        default=None, description="What the restart rules decided when it failed."
    )
    resumed_from: CheckpointRef | None = Field(
        default=None, description="The checkpoint it resumed from; unset: from scratch."
    )
    workers: list[WorkerStatus] | None = Field(
        default=None, description="Every worker's outcome (numNodes > 1), once the attempt ended."
    )
    key: str | None = Field(
        default=None,
        max_length=1024,
        description="Attached runs: what groups the workload's pods into this attempt.",
    )


class TrainingRunStatus(Model):
    """Written by the operator."""

    phase: Literal["Pending", "Running", "BackingOff", "Succeeded", "Failed"] | None = None
    attempt: int | None = Field(default=None, ge=0, description="The latest attempt, from 0.")
    attempts: list[AttemptStatus] = Field(default_factory=list, description="Oldest first.")
    latest_checkpoint: CheckpointRef | None = Field(
        default=None,
        description="The newest Ready full checkpoint: where the next attempt would resume.",
    )
    restarts: int = Field(
        default=0,
        ge=0,
        description="Restarts spent from maxRestarts; Ignore-rule restarts are not counted "
        "(see attempt).",
    )
    attempts_without_progress: int = Field(
        default=0, ge=0, description="Consecutive attempts without a new Ready checkpoint."
    )
    preemptions: int = Field(
        default=0, ge=0, description="Restarts after failures an Ignore rule matched."
    )
    next_attempt_after: datetime | None = Field(
        default=None, description="While backing off: when the next attempt may start."
    )
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)


# --- Checkpoint -----------------------------------------------------------------------------


class CheckpointSpec(Model):
    """One committed checkpoint of a run, registered by the SDK or found by the store scan."""

    run: str = Field(
        min_length=1,
        max_length=63,
        description="Owning TrainingRun.",
        json_schema_extra=_immutable("run"),
    )
    step: int = Field(ge=0, description="The training step.", json_schema_extra=_immutable("step"))
    attempt: int = Field(
        ge=0, description="The attempt that wrote it.", json_schema_extra=_immutable("attempt")
    )
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
    format: Literal["dir", "tar"] = Field(
        default="dir",
        description="A directory, or one uncompressed tar file.",
        json_schema_extra=_immutable("format"),
    )
    kind: Literal["full", "weights"] = Field(
        default="full",
        description="full: training state to resume from; weights: an export for consumers, "
        "never resumed from.",
    )
    metrics: dict[str, float] | None = Field(
        default=None, description="Metrics recorded at save time (used by retention keepBest)."
    )


class CheckpointStatus(Model):
    """Written by the operator: only it verifies."""

    phase: Literal["Pending", "Ready", "Invalid", "Deleting"] | None = Field(
        default=None,
        description="Pending until verified, then Ready or Invalid; Deleting while its storage "
        "waits to be deleted.",
    )
    message: str | None = Field(default=None, description="The outcome of the last verification.")
    size_bytes: int | None = Field(default=None, ge=0, description="Bytes it occupies.")
    digest: str | None = Field(default=None, description="The manifest's digest of its files.")
    verified_at: datetime | None = Field(
        default=None, description="When the operator last checked its files (either outcome)."
    )
    blocked_by: list[str] | None = Field(
        default=None, description="What holds deletion back (consumers, resume targets, …)."
    )
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)
