"""API faults for tests and benchmarks: a control plane of their own, restarted and cut.

:class:`FaultBed` is one run ``r`` in a fresh namespace of a control plane the caller may
restart (:meth:`~ckpt_operator.testing.controlplane.ControlPlane.restart_apiserver`), with the
operator reaching the API server through a :class:`~ckpt_operator.testing.proxy.Proxy` and an
:class:`~ckpt_operator.testing.observer.Observer` judging the invariants over a direct
connection. Each scenario injects a fault at the worst moment (right after the change the
operator must act on) and returns the time to recover: from the end of the fault to the
operator's next correct action (the next attempt's pod, or storage gone), as this process
sees it. A negative time means the operator acted before the fault hit.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from ckpt_operator.api import names
from ckpt_operator.testing import convergence
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.controlplane import ControlPlane
from ckpt_operator.testing.history import Violation
from ckpt_operator.testing.measure import request_counts
from ckpt_operator.testing.observer import Observer
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.proxy import Proxy
from ckpt_operator.testing.waiting import wait_for

RUN = "r"
CONFLICT = (f"{names.TRAINING_RUNS}/status", "PATCH", "409")
"""Only the operator writes a run's status with a resourceVersion: these 409s are its."""


@dataclass
class FaultBed:
    """One run under an operator behind a proxy, watched by an observer."""

    plane: ControlPlane
    api: Any
    workdir: Path
    rng: random.Random
    namespace: str = field(default_factory=lambda: f"f-{uuid.uuid4().hex[:8]}")
    failures: dict[int, str] = field(default_factory=dict)
    recoveries: dict[str, list[float]] = field(default_factory=dict)
    step: int = 0
    paths: dict[int, Path] = field(default_factory=dict)

    @contextmanager
    def running(self) -> Iterator[FaultBed]:
        """Namespace, proxy, observer, operator and run ``r`` at its attempt 0."""
        core = client.CoreV1Api(self.api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        self.cluster = Cluster(self.api, self.namespace)
        self.root = self.workdir / self.namespace
        (self.root / RUN).mkdir(parents=True)
        with (
            Proxy(self.plane.server) as proxy,
            Observer(self.plane.kubeconfig, self.namespace) as obs,
        ):
            self.proxy, self.observer = proxy, obs
            config = proxy.kubeconfig(
                self.plane.kubeconfig, self.workdir / f"{self.namespace}.kubeconfig"
            )
            self.operator = OperatorProcess(
                config,
                self.workdir / f"{self.namespace}-operator.log",
                namespaces=[self.namespace],
                allowed_roots=[f"file://{self.root}"],
            )
            obs.watch_store(RUN, self.root / RUN)
            with self.operator:
                self.cluster.create_run(
                    run_body(RUN, f"file://{self.root / RUN}", max_restarts=1000)
                )
                self.attempt = 0
                self.cluster.wait_pod(RUN, 0, timeout=60)
                yield self

    # --- what the operator must do next -------------------------------------------------------

    def fail(self, sync: bool = True) -> None:
        """The current attempt fails; the operator must start the next one. With ``sync``
        only once the observer is in sync (its watches back after a fault)."""
        if sync:
            self.observer.wait_in_sync()
        self.cluster.fail_pod(RUN, self.attempt)
        self.failures[self.attempt] = "Retry"
        self.attempt += 1

    def restarted(self, timeout: float = 90) -> float:
        """When (monotonic) this process first saw the next attempt's pod."""
        self.cluster.wait_pod(RUN, self.attempt, timeout=timeout)
        return time.monotonic()

    def checkpoints(self, count: int = 2) -> list[str]:
        """Committed, registered, Ready checkpoints of the current attempt, oldest first."""
        self.observer.wait_in_sync()
        made = []
        for _ in range(count):
            self.step += 10
            self.paths[self.step] = (
                self.root / RUN / write_checkpoint(self.root / RUN, RUN, self.step, self.attempt)
            )
            made.append(self.cluster.register(RUN, self.step, self.attempt))
        for made_name in made:
            self.cluster.wait_checkpoint(made_name, "Ready", timeout=60)
        return made

    def deleted(self, name: str, timeout: float = 90) -> float:
        """When (monotonic) the checkpoint's storage and its object were both seen gone."""
        path = self.paths[int(name.split("-step-")[1].split("-a")[0])]
        wait_for(
            lambda: not path.exists() and self.cluster.checkpoint(name) is None,
            timeout,
            f"{name} and its storage to go",
        )
        return time.monotonic()

    def note(self, fault: str, seconds: float) -> None:
        self.recoveries.setdefault(fault, []).append(seconds)

    def jitter(self) -> None:
        """Let the fault land anywhere from before to just after the operator reacts."""
        time.sleep(self.rng.uniform(0, 0.05))

    # --- the verdict --------------------------------------------------------------------------

    def verdict(self, timeout: float = 90) -> list[Violation | str]:
        """Converged (no failure lost or counted twice), then the invariants judged."""
        failures = {RUN: self.failures}

        def done() -> bool:
            self.observer.check(flush=True)
            owed = convergence.problems(self.observer.checker, failures)
            return self.observer.in_sync() and not owed

        try:
            wait_for(done, timeout, "convergence", every=0.5)
        except AssertionError:
            return list(convergence.problems(self.observer.checker, failures))
        return [*self.observer.verdict(), *self.observer.verify_stores()]


class Storm:
    """A competing writer bumping an object's ``resourceVersion`` as fast as it can."""

    def __init__(self, cluster: Cluster, plural: str, name: str) -> None:
        self.cluster, self.plural, self.name = cluster, plural, name
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._bump, daemon=True)

    def __enter__(self) -> Storm:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.seconds = time.monotonic() - self.started

    def _bump(self) -> None:
        while not self._stop.is_set():
            patch = {"metadata": {"annotations": {"chaos.ckpt.dev/bump": str(self.writes)}}}
            self.cluster.custom.patch_namespaced_custom_object(
                names.GROUP, names.VERSION, self.cluster.ns, self.plural, self.name, patch
            )
            self.writes += 1


# --- the scenarios: each returns seconds to recover ------------------------------------------


def apiserver_restart_mid_restart(bed: FaultBed, crash: bool = False) -> float:
    """The attempt fails and the API server restarts at once (gracefully, or killed): the
    next attempt, once."""
    bed.fail()
    bed.jitter()
    up = bed.plane.restart_apiserver(crash=crash)
    return bed.restarted() - up


def apiserver_restart_mid_deletion(bed: FaultBed, crash: bool = False) -> float:
    """A deletion (nothing blocks it) and an API server restart: storage and object go."""
    old, _newer = bed.checkpoints(2)
    bed.cluster.delete(old)
    bed.jitter()
    up = bed.plane.restart_apiserver(crash=crash)
    return bed.deleted(old) - up


def failure_after_apiserver_restart(bed: FaultBed, crash: bool = False) -> float:
    """The API server restarts; the attempt fails as soon as it answers, while the
    operator's watches are still coming back: seconds from the failure to the next pod."""
    bed.plane.restart_apiserver(crash=crash)
    started = time.monotonic()
    bed.fail(sync=False)
    return bed.restarted() - started


def deletion_after_apiserver_restart(bed: FaultBed, crash: bool = False) -> float:
    """As :func:`failure_after_apiserver_restart`, with a deletion: seconds until it is done."""
    old, _newer = bed.checkpoints(2)
    bed.plane.restart_apiserver(crash=crash)
    started = time.monotonic()
    bed.cluster.delete(old)
    return bed.deleted(old) - started


def connections_cut_mid_restart(bed: FaultBed) -> float:
    """Every connection of the operator (its watches too) drops right after a failure."""
    bed.fail()
    bed.jitter()
    bed.proxy.cut()
    cut = time.monotonic()
    return bed.restarted() - cut


def failure_after_connections_cut(bed: FaultBed) -> float:
    """The operator's watches drop and the attempt fails at once, before they are back: the
    failure is seen only through the re-established watch (or its relist)."""
    bed.proxy.cut()
    cut = time.monotonic()
    bed.fail()
    return bed.restarted() - cut


def partition_mid_restart(bed: FaultBed, seconds: float = 2.0) -> float:
    """The operator cannot reach the API server while the attempt fails; then it can."""
    bed.proxy.partition()
    bed.fail()
    time.sleep(seconds)
    bed.proxy.heal()
    healed = time.monotonic()
    return bed.restarted() - healed


def storm_mid_restart(bed: FaultBed) -> tuple[float, float, float, int]:
    """A competing writer bumps the run's resourceVersion while the operator must record
    the failure: seconds to the next pod, to the status naming it, the storm's rate, and the
    409s the API server answered to the operator's status writes meanwhile."""
    before = request_counts(bed.api)[CONFLICT]
    with Storm(bed.cluster, names.TRAINING_RUNS, RUN) as storm:
        started = time.monotonic()
        bed.fail()
        pod_at = bed.restarted()
        bed.cluster.wait_status(RUN, "attempt", bed.attempt, timeout=90)
        status_at = time.monotonic()
    conflicts = request_counts(bed.api)[CONFLICT] - before
    return pod_at - started, status_at - started, storm.writes / storm.seconds, conflicts
