"""Storage faults through the storage interface: a local fsspec filesystem that fails on cue.

:func:`install` registers :class:`FaultyFileSystem` as fsspec's ``file`` protocol in this
process, so every :class:`~ckpt_operator.storage.store.Store` opened afterwards goes through
it. Run as ``python -m ckpt_operator.testing.faultfs run …`` it installs itself and runs the
operator: ``OperatorProcess(..., module="ckpt_operator.testing.faultfs")`` with
``CKPT_FAULT_PLAN`` naming the plan. The plan is a JSON file the test rewrites whenever it likes
(:class:`FaultPlan`); each call re-reads it when it changed. Every fault injected is appended to
``<plan>.log`` as a JSON line, so a test sees the retries and their spacing, across operator
restarts too.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PLAN_ENV = "CKPT_FAULT_PLAN"
OPS = ("ls", "info", "open_read", "open_write", "rm")


@dataclass(frozen=True)
class Fault:
    """Fail (or slow down) operation ``op`` on paths containing ``match``."""

    id: str
    op: str
    match: str = ""
    error: str | None = "EIO"
    """An errno name; None only delays."""
    times: int = -1
    """How many times to fail (over all processes); -1: always."""
    delay_s: float = 0.0


class FaultPlan:
    """The test's side: which faults are active, and which were injected when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path.with_name(path.name + ".log")
        self.set()

    def set(self, *faults: Fault) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"faults": [asdict(f) for f in faults]}))
        os.replace(tmp, self.path)

    def injected(self, fault_id: str | None = None) -> list[dict[str, Any]]:
        """Faults injected so far (of one fault, or all), oldest first."""
        if not self.log.exists():
            return []
        found = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [f for f in found if fault_id is None or f["id"] == fault_id]


class _Plan:
    """This process's view of the plan file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path.with_name(path.name + ".log")
        self.stamp: int | None = None
        self.faults: list[Fault] = []

    def fault_for(self, op: str, path: str) -> Fault | None:
        stamp = self.path.stat().st_mtime_ns
        if stamp != self.stamp:
            self.stamp = stamp
            self.faults = [Fault(**f) for f in json.loads(self.path.read_text())["faults"]]
        for fault in self.faults:
            if fault.op == op and fault.match in path and self._left(fault):
                return fault
        return None

    def _left(self, fault: Fault) -> bool:
        if fault.times < 0 or fault.error is None:
            return True
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return sum(1 for line in lines if json.loads(line)["id"] == fault.id) < fault.times

    def inject(self, fault: Fault, op: str, path: str) -> None:
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.error is None:
            return
        with open(self.log, "a") as log:
            log.write(
                json.dumps({"id": fault.id, "op": op, "path": path, "at": time.time()}) + "\n"
            )
        code = getattr(errno, fault.error)
        raise OSError(code, f"injected {fault.error} ({fault.id})", path)


_plan: _Plan | None = None


class FaultyFileSystem(LocalFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """LocalFileSystem whose calls consult the plan first."""

    def _check(self, op: str, path: Any) -> None:
        if _plan is not None:
            fault = _plan.fault_for(op, str(path))
            if fault is not None:
                _plan.inject(fault, op, str(path))

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> Any:
        self._check("ls", path)
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path: Any, **kwargs: Any) -> Any:
        self._check("info", path)
        return super().info(path, **kwargs)

    def _open(self, path: Any, mode: str = "rb", **kwargs: Any) -> Any:
        self._check("open_read" if "r" in mode else "open_write", path)
        return super()._open(path, mode=mode, **kwargs)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self._check("rm", path)
        super().rm(path, recursive=recursive, maxdepth=maxdepth)


def install(plan: Path) -> None:
    """Route this process's ``file://`` stores through :class:`FaultyFileSystem`."""
    global _plan
    _plan = _Plan(plan)
    fsspec.register_implementation("file", FaultyFileSystem, clobber=True)


def main() -> None:
    install(Path(os.environ[PLAN_ENV]))
    from ckpt_operator.cli.operator import app

    app(prog_name="ckpt-operator")


if __name__ == "__main__":
    main()
