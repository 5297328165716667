"""The hostile input corpus: malformed TrainingRuns, Checkpoints and consumer annotations, as data.

Each case changes a valid body and says what must come of it: refused at admission naming the
field (:class:`Rejected`), or accepted and surfaced by the operator as a condition on the object
(:class:`Condition`) or as an Event (:class:`Event`). Edits (``edit=True``) are applied to a
live object whose run has started an attempt. ``tests/integration/test_hostile.py`` applies
them all to a real API server with the operator running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ckpt_operator.api import names

Kind = Literal["TrainingRun", "Checkpoint", "Pod"]
Path = tuple[str | int, ...]
DELETE = object()
"""As a value in ``changes``: remove the field."""
BASE_RUN = "base"
"""The valid run every Checkpoint and consumer case refers to; it holds steps 1 and 2, Ready."""
STORE = "<store>"
"""In a store URI: the allowed root the operator is given."""


@dataclass(frozen=True)
class Rejected:
    """422 at admission; ``field`` is a cause's field and appears in the message."""

    field: str
    says: str = ""


@dataclass(frozen=True)
class Condition:
    """Accepted; the operator sets condition ``type`` to ``status`` for ``reason``."""

    type: str
    reason: str
    status: str = "False"
    says: str = ""


@dataclass(frozen=True)
class Event:
    """Accepted; a Warning Event with ``reason`` on the base run names the object."""

    reason: str


Expectation = Rejected | Condition | Event


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    kind: Kind
    changes: Mapping[Path, Any]
    expect: Expectation
    edit: bool = False
    name: str = ""
    """The object's name when it matters (default: derived from the case's position)."""
    setup: Mapping[str, Any] = field(default_factory=dict)


def p(dotted: str) -> Path:
    """``"spec.rules.0.action"`` as a path; numbers index lists."""
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


LOADED_STEP: Path = ("metadata", "annotations", names.ANNOTATION_LOADED_STEP)
LONG = "x" * 5000
"""Longer than 4 KB."""
BIDI = "\u202e"
"""RIGHT-TO-LEFT OVERRIDE: 'gnp.exe' shows as 'exe.png'."""


def _run(category: str, dotted: str, value: Any, named: str | None = None, says: str = "") -> Case:
    return Case(
        f"run:{dotted}={value!r}"[:90],
        category,
        "TrainingRun",
        {p(dotted): value},
        Rejected(named or _field(dotted), says),
    )


def _ckpt(category: str, dotted: str, value: Any, named: str | None = None, says: str = "") -> Case:
    return Case(
        f"ckpt:{dotted}={value!r}"[:90],
        category,
        "Checkpoint",
        {p(dotted): value},
        Rejected(named or _field(dotted), says),
    )


def _field(dotted: str) -> str:
    """How the API server names a path: ``spec.rules[0].action``."""
    out = ""
    for part in dotted.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


URI = "spec.store.uri"
PATH = "spec.path"
RULE = {"action": "Retry", "onExitCodes": {"operator": "In", "values": [1]}}

CORPUS: list[Case] = [
    # --- TrainingRun: wrong types -------------------------------------------------------------
    _run("wrong type", URI, 5),
    _run("wrong type", "spec.numNodes", "two"),
    _run("wrong type", "spec.restartPolicy", "always"),
    _run("wrong type", "spec.template.spec.containers", {"name": "c"}),
    _run("wrong type", "spec.consumers.reportTimeoutSeconds", 1.5),
    _run("wrong type", "spec.retention.keepLast", True),
    _run("wrong type", "spec.verify", ["full"]),
    _run("wrong type", "spec.store.secretRef", "creds"),
    # --- TrainingRun: integers out of range ---------------------------------------------------
    _run("integer bounds", "spec.restartPolicy.maxRestarts", 2**63),
    _run("integer bounds", "spec.restartPolicy.maxRestarts", 2**31),
    _run("integer bounds", "spec.numNodes", 2**63 - 1),
    _run("integer bounds", "spec.numNodes", 0),
    _run("integer bounds", "spec.masterPort", 70000),
    _run("integer bounds", "spec.masterPort", -1),
    _run("integer bounds", "spec.startupTimeoutSeconds", 2**63 - 1),
    _run("integer bounds", "spec.retention.maxBytes", 2**63 - 1),
    _run("integer bounds", "spec.retention.maxBytes", -1),
    _run("integer bounds", "spec.retention.keepEvery", 2**40),
    _run(
        "integer bounds",
        "spec.retention.keepBest",
        {"metric": "loss", "count": 0},
        "spec.retention.keepBest.count",
    ),
    _run("integer bounds", "spec.restartPolicy.backoff.maxSeconds", 1e300),
    _run("integer bounds", "spec.restartPolicy.backoff.initialSeconds", -0.5),
    _run("integer bounds", "spec.restartPolicy.maxPreemptions", -1),
    _run("integer bounds", "spec.consumers.reportTimeoutSeconds", 2**63 - 1),
    _run(
        "integer bounds",
        "spec.restartPolicy.rules",
        [{**RULE, "onExitCodes": {"operator": "In", "values": [2**40]}}],
        "spec.restartPolicy.rules[0].onExitCodes.values[0]",
    ),
    # --- TrainingRun: empty and over-long strings ---------------------------------------------
    _run("empty", URI, ""),
    _run("empty", "spec.store.secretRef", {"name": ""}, "spec.store.secretRef.name"),
    _run("empty", "spec.retention", {"keepBest": {"metric": ""}}, "spec.retention.keepBest.metric"),
    _run(
        "empty",
        "spec.restartPolicy.rules",
        [{"action": "Ignore", "onReasons": []}],
        "spec.restartPolicy.rules[0].onReasons",
    ),
    _run(
        "empty",
        "spec.consumers.selector",
        {"matchExpressions": [{"key": "", "operator": "Exists"}]},
        "spec.consumers.selector.matchExpressions[0].key",
    ),
    _run("over 4 KB", URI, "file:///data/" + LONG),
    _run("over 4 KB", "spec.store.secretRef", {"name": "s" * 300}, "spec.store.secretRef.name"),
    _run(
        "over 4 KB",
        "spec.retention",
        {"keepBest": {"metric": LONG}},
        "spec.retention.keepBest.metric",
    ),
    _run(
        "over 4 KB",
        "spec.restartPolicy.rules",
        [{"action": "Ignore", "onReasons": [LONG]}],
        "spec.restartPolicy.rules[0].onReasons[0]",
    ),
    _run(
        "over 4 KB",
        "spec.consumers.selector",
        {"matchLabels": {"app": LONG}},
        "spec.consumers.selector.matchLabels.app",
    ),
    _run(
        "over 4 KB",
        "spec.consumers.selector",
        {"matchLabels": {LONG: "v"}},
        "spec.consumers.selector.matchLabels",
    ),
    _run("over 4 KB", "metadata.name", "r" * 64),
    # --- TrainingRun: store URIs --------------------------------------------------------------
    _run("bad URI scheme", URI, "http://example.com/x"),
    _run("bad URI scheme", URI, "ftp://host/x"),
    _run("bad URI scheme", URI, "javascript:alert(1)"),
    _run("bad URI scheme", URI, "S3://bucket/x"),
    _run("bad URI scheme", URI, "file://host/etc"),
    _run("bad URI scheme", URI, "s3://"),
    _run("bad URI scheme", URI, " file:///data"),
    _run("encoded ..", URI, "file:///data/%2e%2e/etc", says="%2e%2e"),
    _run("encoded ..", URI, "file:///data/%2E%2E%2Fetc"),
    _run("encoded ..", URI, "s3://bucket/a/../../b", says="'..'"),
    _run("encoded ..", URI, "file:///data/./x"),
    _run("encoded ..", URI, "file:///data\\..\\etc", says="backslash"),
    _run("NUL/RTL/newline", URI, "file:///data/x\x00y", says="NUL"),
    _run("NUL/RTL/newline", URI, "file:///data/x\ny", says="newlines"),
    _run("NUL/RTL/newline", URI, f"file:///data/{BIDI}gnp.exe", says="bidirectional"),
    _run("NUL/RTL/newline", URI, "file:///data/\u2066x\u2069", says="bidirectional"),
    _run("NUL/RTL/newline", URI, "file:///data/x\u200by", says="zero-width"),
    _run("bad URI scheme", URI, "file:///data/x?y=1", says="'?'"),
    _run("bad URI scheme", URI, "file:///data/x#frag", says="'#'"),
    _run("wrong type", "spec.store.secretRef", {"name": "../etc"}, "spec.store.secretRef.name"),
    # --- Checkpoint: wrong types, bounds, strings --------------------------------------------
    _ckpt("wrong type", "spec.step", "5"),
    _ckpt("wrong type", "spec.step", 1.5),
    _ckpt("wrong type", "spec.run", 5),
    _ckpt("wrong type", "spec", "step-1"),
    _ckpt("wrong type", "spec.metrics", {"loss": "low"}, "spec.metrics.loss"),
    _ckpt("integer bounds", "spec.step", 2**63),
    _ckpt("integer bounds", "spec.step", 10**10),
    _ckpt("integer bounds", "spec.step", -1),
    _ckpt("integer bounds", "spec.attempt", 2**31),
    _ckpt("empty", "spec.run", ""),
    _ckpt("empty", "spec.kind", ""),
    _ckpt("empty", PATH, DELETE),
    _ckpt("wrong type", "spec.run", "Bad_Name"),
    _ckpt("wrong type", "spec.format", "zip"),
    _ckpt("over 4 KB", "spec.run", "r" * 64),
    _ckpt("over 4 KB", PATH, LONG),
    _ckpt("over 4 KB", "spec.metrics", {"m" * 300: 1.0}),
    _ckpt("over 4 KB", "spec.metrics", {f"m{i}": 1.0 for i in range(100)}),
    # --- Checkpoint: paths --------------------------------------------------------------------
    _ckpt("NUL/RTL/newline", PATH, "step-0000000001.attempt-0\x00", says="NUL"),
    _ckpt("NUL/RTL/newline", PATH, "step-0000000001\n.attempt-0", says="newlines"),
    _ckpt("NUL/RTL/newline", PATH, f"{BIDI}0-tpmetta.1000000000-pets", says="bidirectional"),
    _ckpt("NUL/RTL/newline", PATH, "step-0000000001.attempt-0\u2028", says="newlines"),
    _ckpt("encoded ..", PATH, "%2e%2e/%2e%2e/etc", says="%2e%2e"),
    _ckpt("encoded ..", PATH, "..%2fetc"),
    _ckpt("encoded ..", PATH, "./step-0000000001.attempt-0", says="'.'"),
    _ckpt("encoded ..", PATH, "a/../../b", says="'..'"),
    _ckpt("encoded ..", PATH, "C:\\Windows\\..", says="backslash"),
    _ckpt("bad URI scheme", PATH, "/etc/passwd"),
    _ckpt("bad URI scheme", PATH, "s3://other-bucket/x"),
    _ckpt("bad URI scheme", PATH, "file:///etc/passwd"),
    # --- edits of live objects ----------------------------------------------------------------
    Case(
        "edit:spec.store.uri while running",
        "edit while running",
        "TrainingRun",
        {p(URI): f"file://{STORE}/elsewhere"},
        Rejected(URI, "immutable once an attempt has started"),
        edit=True,
    ),
    Case(
        "edit:spec.numNodes while running",
        "edit while running",
        "TrainingRun",
        {p("spec.numNodes"): 2},
        Rejected("spec.numNodes", "immutable once an attempt has started"),
        edit=True,
    ),
    Case(
        "edit:checkpoint spec.kind",
        "edit while running",
        "Checkpoint",
        {p("spec.kind"): "weights"},
        Rejected("spec.kind", "immutable"),
        edit=True,
    ),
    Case(
        "edit:checkpoint spec.path",
        "edit while running",
        "Checkpoint",
        {p(PATH): "step-0000000009.attempt-0"},
        Rejected(PATH, "immutable"),
        edit=True,
    ),
    # --- accepted, surfaced by the operator: Checkpoints ---------------------------------------
    Case(
        "ckpt:run does not exist, annotated with another run's store",
        "run that does not exist",
        "Checkpoint",
        {
            p("spec.run"): "ghost",
            p("spec.step"): 2,
            p(PATH): "step-0000000002.attempt-0",
            ("metadata", "annotations", names.ANNOTATION_STORE): f"file://{STORE}/{BASE_RUN}",
        },
        Condition("Verified", "RunNotFound"),
        name="ghost-claim",
    ),
    Case(
        "ckpt:step directory missing",
        "step directory missing",
        "Checkpoint",
        {p("spec.step"): 777, p(PATH): "step-0000000777.attempt-0"},
        Condition("Verified", "Missing"),
    ),
    Case(
        "ckpt:manifest is garbage",
        "step directory missing",
        "Checkpoint",
        {p("spec.step"): 3, p(PATH): "step-0000000003.attempt-0"},
        Condition("Verified", "VerificationFailed", says="MANIFEST.json"),
        name=names.checkpoint_object_name(BASE_RUN, 3, 0),
        setup={"garbage_manifest": "step-0000000003.attempt-0"},
    ),
    Case(
        "ckpt:duplicate under another name",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 2, p(PATH): "step-0000000002.attempt-0"},
        Condition("Verified", "Duplicate", says=names.checkpoint_object_name(BASE_RUN, 2, 0)),
        name="twin",
    ),
    Case(
        "ckpt:path of step 2 claims step 999",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 999, p(PATH): "step-0000000002.attempt-0"},
        Condition("Verified", "Mismatch", says="step-0000000999.attempt-0"),
        name="liar",
    ),
    Case(
        "ckpt:path of step 2 claims attempt 5",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 2, p("spec.attempt"): 5, p(PATH): "step-0000000002.attempt-0"},
        Condition("Verified", "Mismatch"),
    ),
    Case(
        "ckpt:path of step 2 with a trailing slash",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 2, p(PATH): "step-0000000002.attempt-0/"},
        Condition("Verified", "Mismatch"),
    ),
    Case(
        "ckpt:directory claimed as a tar",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 2, p("spec.format"): "tar", p(PATH): "step-0000000002.attempt-0"},
        Condition("Verified", "Mismatch"),
    ),
    Case(
        "ckpt:full checkpoint claimed as weights",
        "duplicate",
        "Checkpoint",
        {p("spec.step"): 2, p("spec.kind"): "weights", p(PATH): "step-0000000002.attempt-0"},
        Condition("Verified", "Mismatch"),
    ),
    Case(
        "ckpt:a path that names no checkpoint",
        "step directory missing",
        "Checkpoint",
        {p(PATH): "notes/README"},
        Condition("Verified", "Mismatch"),
    ),
    # --- accepted, surfaced by the operator: TrainingRuns --------------------------------------
    Case(
        "run:store outside the allowed roots",
        "bad URI scheme",
        "TrainingRun",
        {p(URI): "file:///etc/ckpt"},
        Condition("Failed", "StoreNotAllowed", "True"),
    ),
    Case(
        "run:container without an image",
        "wrong type",
        "TrainingRun",
        {p("spec.template.spec.containers"): [{"name": "trainer"}]},
        Condition("Failed", "InvalidTemplate", "True", says="image"),
    ),
    Case(
        "run:container name the API refuses",
        "wrong type",
        "TrainingRun",
        {p("spec.template.spec.containers"): [{"name": "Not_A_Name", "image": "x"}]},
        Condition("Failed", "InvalidTemplate", "True"),
    ),
    Case(
        "run:env is not a list",
        "wrong type",
        "TrainingRun",
        {p("spec.template.spec.containers"): [{"name": "t", "image": "x", "env": "A=1"}]},
        Condition("Failed", "InvalidTemplate", "True", says="env"),
    ),
    # --- consumer annotations: no report, keeps blocking, a Warning on the run -----------------
    *(
        Case(
            f"pod:loaded-step={value!r}"[:90],
            category,
            "Pod",
            {LOADED_STEP: value},
            Event("InvalidLoadedStep"),
        )
        for category, value in [
            ("loaded-step", "abc"),
            ("loaded-step", "-5"),
            ("loaded-step", "1.5"),
            ("loaded-step", "99999999999999999999"),
            ("loaded-step", str(2**63)),
            ("loaded-step", "+7"),
            ("loaded-step", "1e3"),
            ("loaded-step", "\u0663"),
            ("loaded-step", ""),
            ("loaded-step", "7\n8"),
            ("loaded-step", "0x10"),
            ("loaded-step", "1_000"),
            ("loaded-step", f"{BIDI}7"),
            ("over 4 KB", "7" * 5000),
        ]
    ),
]
