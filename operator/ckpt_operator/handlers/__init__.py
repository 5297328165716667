"""Kopf handlers: thin adapters from Kubernetes events to the pure decisions in ``policy``.

Importing this package registers every handler with Kopf:

* ``startup``        — settings, liveness, metrics, the shared :class:`runtime.Runtime`
* ``indexes``        — in-memory views of runs, checkpoints and pods (typed keyword arguments)
* ``wakeups``        — the watch events that wake waiting handlers
* ``runs``           — one daemon per TrainingRun: its attempts
* ``checkpoints``    — initial status and verification of each Checkpoint
* ``storage_release`` — the finalizer deleting a checkpoint's storage when it is safe
* ``maintenance``    — the per-run timer: consumer health, retention, store scan, sweep
* ``run_deletion``   — the TrainingRun finalizer: its checkpoints first, then the store
* ``attached``       — one daemon per attached run (``spec.workload``): its pods into status

``admission`` (the webhook for attached runs) registers only when enabled (``--webhook-port``).
"""

from ckpt_operator.handlers import (
    attached,
    checkpoints,
    indexes,
    maintenance,
    run_deletion,
    runs,
    startup,
    storage_release,
    wakeups,
)

__all__ = [
    "attached",
    "checkpoints",
    "indexes",
    "maintenance",
    "run_deletion",
    "runs",
    "startup",
    "storage_release",
    "wakeups",
]
