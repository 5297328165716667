"""A single background writer with a bounded queue, for asynchronous saves.

The caller stages a private host copy of the state first, so training may continue and
mutate its tensors while the copy is written. ``max_pending`` bounds how many staged copies
wait behind the one being written (host memory is at most ``max_pending + 2`` states):
a save beyond that blocks until the writer catches up. A writer that dies mid-write leaves
only a temporary name behind, never a committed checkpoint.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class AsyncWriter:
    """Runs submitted jobs one after another in a daemon thread."""

    def __init__(self, max_pending: int = 1) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="ckpt-writer", daemon=True)
        self._thread.start()
        # Daemon threads die at exit; drain first so a trainer that returns from main()
        # right after its last asynchronous save still commits it.
        atexit.register(self.close)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job()
            except BaseException as exc:
                log.exception("asynchronous checkpoint save failed")
                self._error = self._error or exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("an earlier asynchronous checkpoint save failed") from error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; blocks while the queue is full. Re-raises an earlier job's error."""
        self._raise_pending()
        if not self._thread.is_alive():
            raise RuntimeError("the asynchronous writer is closed")
        self._queue.put(job)

    def wait(self) -> None:
        """Block until every submitted job has finished; re-raise the first failure."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()
