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
CATEGORY = "ckpt-operator"
"""``kubectl get ckpt-operator`` lists both kinds. Not ``ckpt``: kubectl expands a category before
a short name, so ``kubectl delete ckpt --all`` would delete the TrainingRuns too."""
FINALIZER = f"{GROUP}/storage-protection"
MERGE_PATCH = "application/merge-patch+json"

# --- labels -----------------------------------------------------------------------------------
LABEL_RUN = f"{GROUP}/run"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_NODE_RANK = f"{GROUP}/node-rank"
LABEL_STEP = f"{GROUP}/step"
LABEL_CONSUMER_OF = f"{GROUP}/consumer-of"
LABEL_WEBHOOK = f"{GROUP}/webhook"
"""On a namespace: ``enabled`` lets the admission webhook see its pods labelled ``ckpt.dev/run``."""
WEBHOOK_ENABLED = "enabled"

# --- annotations ------------------------------------------------------------------------------
ANNOTATION_LOADED_STEP = f"{GROUP}/loaded-step"
"""Set by a consumer pod on itself: the step it has loaded."""
ANNOTATION_HEARTBEAT = f"{GROUP}/heartbeat"
"""Refreshed by a live consumer on itself while it keeps serving a step; only the API server's
record of *when* it changed is trusted, never its value."""
ANNOTATION_FORCE_DELETE = f"{GROUP}/force-delete"
"""``"true"`` on a Checkpoint: delete its storage even while something would block it."""
ANNOTATION_VERIFY_REQUESTED = f"verify.{GROUP}/requested-at"
"""On a Checkpoint, set by ``kubectl ckpt verify`` to the time of the request: the operator
verifies it again, records the outcome, then removes the annotation. Not under ``ckpt.dev/``:
Kopf keeps its progress there and leaves those annotations out of change detection (Flux's
``reconcile.fluxcd.io/requestedAt`` is the same pattern)."""
ANNOTATION_RESUME_FROM = f"{GROUP}/resume-from"
"""On an attempt pod: the Checkpoint object it resumes from (empty: from scratch)."""
ANNOTATION_RESUME_STEP = f"{GROUP}/resume-step"
ANNOTATION_STORE = f"{GROUP}/store"
"""On a Checkpoint: the store root it was verified in, where its files are if its run is gone."""
ANNOTATION_STORE_SECRET = f"{GROUP}/store-secret"
"""On a Checkpoint: the Secret with the store's credentials, for the same reason."""
KOPF_PREFIX = GROUP
"""Prefix of Kopf's own progress and diff-base annotations."""
WEBHOOK_PATH = "inject"
"""The admission handler's id, which Kopf's webhook server serves at ``/inject``."""
WEBHOOK_NAME = f"inject.pods.{GROUP}"
"""The webhook's name in the MutatingWebhookConfiguration (and in the API server's errors)."""

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

# torchrun's environment (as Kubeflow's PyTorchJob and Trainer set it), for numNodes > 1
ENV_PET_NNODES = "PET_NNODES"
ENV_PET_NODE_RANK = "PET_NODE_RANK"
ENV_PET_MASTER_ADDR = "PET_MASTER_ADDR"
ENV_PET_MASTER_PORT = "PET_MASTER_PORT"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"

# --- vocabulary of Checkpoint specs -----------------------------------------------------------
Format = Literal["dir", "tar"]
Kind = Literal["full", "weights"]
KIND_PREFIX: dict[Kind, str] = {"full": "step", "weights": "weights"}


def checkpoint_object_name(run: str, step: int, attempt: int, kind: Kind = "full") -> str:
    """Name of the Checkpoint object that records a run's checkpoint."""
    return f"{run}-{KIND_PREFIX[kind]}-{step}-a{attempt}"


def attempt_pod_name(run: str, attempt: int, rank: int = 0, num_nodes: int = 1) -> str:
    """Deterministic, so creating an attempt's pod twice is a harmless conflict.

    A single-node run's pod is ``<run>-attempt-<n>``; a gang's workers ``<run>-attempt-<n>-<rank>``.
    """
    base = f"{run}-attempt-{attempt}"
    return base if num_nodes == 1 else f"{base}-{rank}"
