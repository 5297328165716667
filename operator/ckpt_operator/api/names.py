"""Every name the operator, the SDK and users share: API group, labels, annotations, env vars.

These are the contract (docs/design.md): changing one breaks clusters and trainer code that
rely on it, so each is spelled exactly once, here. Store paths live in
:mod:`ckpt_operator.storage.layout`.
"""

from __future__ import annotations

from typing import Literal

GROUP = "ckpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
TRAINING_RUNS = "trainingruns"
CHECKPOINTS = "checkpoints"
FINALIZER = f"{GROUP}/storage-protection"
MERGE_PATCH = "application/merge-patch+json"

# --- labels -----------------------------------------------------------------------------------
LABEL_RUN = f"{GROUP}/run"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_STEP = f"{GROUP}/step"
LABEL_CONSUMER_OF = f"{GROUP}/consumer-of"

# --- annotations ------------------------------------------------------------------------------
ANNOTATION_LOADED_STEP = f"{GROUP}/loaded-step"
"""Set by a consumer pod on itself: the step it has loaded."""
ANNOTATION_FORCE_DELETE = f"{GROUP}/force-delete"
"""``"true"`` on a Checkpoint: delete its storage even while something would block it."""
ANNOTATION_RESUME_FROM = f"{GROUP}/resume-from"
"""On an attempt pod: the Checkpoint object it resumes from (empty: from scratch)."""
ANNOTATION_RESUME_STEP = f"{GROUP}/resume-step"
ANNOTATION_STORE = f"{GROUP}/store"
"""On a Checkpoint: the store root it was verified in, where its files are if its run is gone."""
ANNOTATION_STORE_SECRET = f"{GROUP}/store-secret"
"""On a Checkpoint: the Secret with the store's credentials, for the same reason."""
KOPF_PREFIX = GROUP
"""Prefix of Kopf's own progress and diff-base annotations."""

# --- env of attempt pods (the contract with trainer code) ------------------------------------
ENV_RUN = "CKPT_RUN"
ENV_NAMESPACE = "CKPT_NAMESPACE"
ENV_ATTEMPT = "CKPT_ATTEMPT"
ENV_STORE = "CKPT_STORE"
ENV_RESUME_FROM = "CKPT_RESUME_FROM"
ENV_RESUME_STEP = "CKPT_RESUME_STEP"
ENV_RESUME_CANDIDATES = "CKPT_RESUME_CANDIDATES"
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ATTEMPT_ENV = (
    ENV_RUN,
    ENV_NAMESPACE,
    ENV_ATTEMPT,
    ENV_STORE,
    ENV_RESUME_FROM,
    ENV_RESUME_STEP,
    ENV_RESUME_CANDIDATES,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
)
"""Everything the operator sets in an attempt pod; the template's own values are replaced."""

# --- vocabulary of Checkpoint specs -----------------------------------------------------------
Format = Literal["dir", "tar", "dcp"]
"""``dcp``: a torch.distributed.checkpoint directory (``.distcp`` shards + ``.metadata``)."""
Kind = Literal["full", "weights"]
KIND_PREFIX: dict[Kind, str] = {"full": "step", "weights": "weights"}


def checkpoint_object_name(run: str, step: int, attempt: int, kind: Kind = "full") -> str:
    """Name of the Checkpoint object that records a run's checkpoint."""
    return f"{run}-{KIND_PREFIX[kind]}-{step}-a{attempt}"


def attempt_pod_name(run: str, attempt: int) -> str:
    """Deterministic, so creating an attempt's pod twice is a harmless conflict."""
    return f"{run}-attempt-{attempt}"
