"""Names of things in a run's checkpoint store.

One module owns every store naming rule, so the SDK that writes checkpoints, the operator that
scans and deletes them, and the kubectl plugin that resolves ``RUN/STEP`` always agree.

Store layout under the run's root (``CKPT_STORE``)::

    step-0000000200.attempt-1/          committed full directory checkpoint (holds MANIFEST_NAME)
    step-0000000200.attempt-1.tar       committed full tar checkpoint (MANIFEST_NAME is a member)
    step-0000000200.attempt-1.dcp/      committed torch.distributed.checkpoint directory
    weights-0000000200.attempt-1/       committed weights-only export for inference
    .tmp.step-0000000300.attempt-2.<id> uncommitted work in progress; readers ignore it

The step is zero-padded so a plain listing sorts by step; the attempt and the kind are part of
the name so two attempts that both reach a step, or a full save and a weights export of the
same step, never collide. The ``.dcp`` suffix tells a DCP directory from a native one by name
alone, so a loader can pick the reader before opening anything. Directory formats (``dir``,
``dcp``) are committed by their manifest; see :attr:`CheckpointName.is_directory`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ckpt_operator.api.names import KIND_PREFIX, Format, Kind, checkpoint_object_name

MANIFEST_NAME = "MANIFEST.json"
TMP_PREFIX = ".tmp."
TAR_SUFFIX = ".tar"
DCP_SUFFIX = ".dcp"
_SUFFIX: dict[Format, str] = {"dir": "", "tar": TAR_SUFFIX, "dcp": DCP_SUFFIX}
_FORMAT_OF_SUFFIX: dict[str, Format] = {suffix: fmt for fmt, suffix in _SUFFIX.items()}

_COMMITTED = re.compile(
    r"^(?P<prefix>step|weights)-(?P<step>\d{10})\.attempt-(?P<attempt>\d+)"
    r"(?P<suffix>\.tar|\.dcp)?$"
)


@dataclass(frozen=True)
class CheckpointName:
    """A committed checkpoint's identity as it appears in the store."""

    step: int
    attempt: int
    format: Format
    kind: Kind = "full"

    @property
    def path(self) -> str:
        """Path relative to the run's store root."""
        base = f"{KIND_PREFIX[self.kind]}-{self.step:010d}.attempt-{self.attempt}"
        return base + _SUFFIX[self.format]

    @property
    def is_directory(self) -> bool:
        """A directory of files committed by its manifest (``dir``, ``dcp``), not one archive."""
        return self.format != "tar"

    def object_name(self, run: str) -> str:
        """Name of the Checkpoint object that records it."""
        return checkpoint_object_name(run, self.step, self.attempt, self.kind)

    def temporary_path(self, unique: str) -> str:
        """Where it is written before the commit; ``unique`` keeps concurrent writers apart."""
        return f"{TMP_PREFIX}{self.path}.{unique}"


def parse_committed(path: str) -> CheckpointName | None:
    """The checkpoint a store entry names, or None for temporaries and foreign entries."""
    match = _COMMITTED.match(path.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        return None
    fmt = _FORMAT_OF_SUFFIX[match["suffix"] or ""]
    kind: Kind = "weights" if match["prefix"] == "weights" else "full"
    return CheckpointName(int(match["step"]), int(match["attempt"]), fmt, kind)


def is_temporary(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(TMP_PREFIX)


def join_uri(root: str, path: str) -> str:
    """The URI of ``path`` (relative, already validated) under the store root URI."""
    return f"{root.rstrip('/')}/{path.lstrip('/')}"
