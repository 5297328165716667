"""Save on a preemption notice: SIGTERM, then a checkpoint, then a distinct exit code.

A node being drained, a pod being preempted or evicted, a spot instance being reclaimed: the
kubelet sends SIGTERM and waits ``terminationGracePeriodSeconds`` before SIGKILL. Training
done since the last periodic checkpoint is lost unless it is saved in that window. The exit
code (``names.EXIT_PREEMPTED``) tells the operator the attempt was stopped and saved, so its
default restart rule counts it as a preemption instead of spending the restart budget.

Single process only: under a ``torch.distributed`` process group a save is collective, and
the ranks of a job get their SIGTERMs at different times (each pod's kubelet sends its own),
so ranks would enter the save at different points of training and wait for each other until
the collective timeout. :func:`save_on_sigterm` refuses to start there; distributed jobs rely
on their periodic checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from ckpt_operator.api import names
from ckpt_operator.sdk.collective import in_process_group
from ckpt_operator.storage.layout import CheckpointName

if TYPE_CHECKING:
    from ckpt_operator.sdk.manager import CheckpointManager

log = logging.getLogger(__name__)

StateFn = Callable[[], Mapping[str, Any]]
"""Returns the keyword arguments of :meth:`CheckpointManager.save` (``step``, ``model``, …)."""


class PreemptionNotice:
    """What :func:`save_on_sigterm` yields: whether SIGTERM came, and a way to defer the save.

    The save runs in the signal handler, between two Python bytecodes of the main thread.
    Wrap an update that must not be saved half-done (``optimizer.step()``) in :meth:`hold`:
    a SIGTERM that arrives inside it saves once the block has finished.
    """

    def __init__(self, manager: CheckpointManager, state_fn: StateFn, exit_code: int) -> None:
        self._manager = manager
        self._state_fn = state_fn
        self._exit_code = exit_code
        self._holding = 0
        self.received_at: float | None = None
        """``time.monotonic()`` when SIGTERM arrived; None until it does."""

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Defer a save requested inside this block to its end."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if self._holding == 0 and self.requested:
            self._save_and_exit()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return  # a second SIGTERM while saving: the save goes on
        self.received_at = time.monotonic()
        log.warning("SIGTERM: saving a checkpoint before the grace period ends")
        if self._holding == 0:
            self._save_and_exit()

    def _save_and_exit(self) -> None:
        manager = self._manager
        manager.wait()  # an asynchronous save in flight is committed first
        state = dict(self._state_fn())
        name = CheckpointName(int(state["step"]), manager.attempt, manager.format)
        if manager.store.exists(name.path):
            # A periodic save already committed this step (SIGTERM came before the next
            # step ended): saving again would fail with CheckpointExistsError, a crash.
            uri = manager.store.uri(name.path)
            log.warning("%s is already saved: nothing to save", uri)
        else:
            uri = manager.save(**state, blocking=True)
        manager.close()
        assert self.received_at is not None
        took = time.monotonic() - self.received_at
        log.warning("saved %s %.1f s after SIGTERM; exiting %d", uri, took, self._exit_code)
        raise SystemExit(self._exit_code)


@contextlib.contextmanager
def save_on_sigterm(
    manager: CheckpointManager,
    state_fn: StateFn,
    *,
    exit_code: int = names.EXIT_PREEMPTED,
) -> Iterator[PreemptionNotice]:
    """On SIGTERM inside the block, save ``manager.save(**state_fn())`` and exit ``exit_code``.

    ``state_fn`` should describe the last completed step (keep the step it returns in step
    with the model). Installs the handler on entry and restores the previous one on exit;
    call it from the main thread (Python delivers signals only there). A failed save raises
    as usual: the attempt then ends as a crash, not as a preemption. When the step is already
    committed (a periodic save of it), nothing is saved and the exit code is the same.

    Single process only: under a ``torch.distributed`` group of more than one rank it raises
    :class:`RuntimeError` (see the module's documentation).
    """
    if in_process_group():
        raise RuntimeError(
            "save_on_sigterm is single-process only: under torch.distributed a save is "
            "collective and the ranks get SIGTERM at different times; rely on periodic saves"
        )
    notice = PreemptionNotice(manager, state_fn, exit_code)
    previous = signal.signal(signal.SIGTERM, notice._on_signal)
    try:
        yield notice
    finally:
        signal.signal(signal.SIGTERM, previous)
