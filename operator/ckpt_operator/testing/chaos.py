"""Chaos: the operator SIGKILLed at random instants while runs fail, save, report and delete.

One scenario, shared by ``tests/integration/test_chaos.py`` (bounded) and
``benchmarks/chaos.py`` (long): two single-node runs and a gang, played by the test as the
kubelet, the trainers and the consumers would, all driven by one seeded RNG:

* ``s0``: retention ``keepLast: 2``; ``s1``: consumers silent after 4 s count as gone;
  ``g``: ``numNodes`` workers per attempt, ``keepLast: 2``;
* workers go Running, then one fails (exit code 1: ``Retry``; ``Preempted``: ``Ignore``),
  every failure injected is remembered with the action the rules must record for it;
* the current attempt saves committed checkpoints (directories and tars), most registered by
  the "trainer", the rest left to the operator's store scan;
* each run's consumer reports the newest Ready step it sees; checkpoints are deleted
  explicitly, some forced; some gang workers stay Terminating once deleted (a slow kubelet)
  until released;
* meanwhile, at random instants, the operator is SIGKILLed (sometimes again while it starts
  up) and restarted; the actions go on while it is down.

Then everything must converge, every store entry verify, and deleting the runs must leave
nothing behind. The :class:`~ckpt_operator.testing.observer.Observer` judges the invariants
throughout; the seed replays the same sequence of actions (the timing of a real cluster and a
real process varies, so a replay is likely, not certain, to hit the same interleaving).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import names
from ckpt_operator.api.models import MAX_STEP
from ckpt_operator.testing import convergence
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import HOLD, Cluster, run_body
from ckpt_operator.testing.history import (
    CHECKPOINTS,
    CRASH_CONVERGENCE,
    PODS,
    RUNS,
    SAFE_DELETION,
    Body,
    Violation,
    attempt_of,
    ckpt_key,
    live,
    meta,
    phase,
    terminating,
    usable,
)
from ckpt_operator.testing.observer import Observer
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

STUCK = "stuck: "
DUPLICATES = ("created twice", "alive at once", "created after")
"""Messages of the checker meaning an attempt's work was done twice (or out of order)."""
FINALIZERS = ("remains (finalizers", "still Terminating")
"""Messages of :mod:`~ckpt_operator.testing.convergence` meaning a finalizer never let go."""
ACTIONS = {"start": 3, "fail": 3, "save": 4, "report": 2, "delete": 1, "hold": 1, "release": 1}


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    kills: int = 30
    gang: int = 3
    """Workers per attempt of the multi-node run."""
    max_life_s: float = 4.0
    """A live operator is killed after working up to this long (uniformly drawn)."""
    startup_kills: float = 0.4
    """The share of kills that land while it starts up."""
    converge_timeout_s: float = 120.0


@dataclass
class ChaosResult:
    seed: int
    kills: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    convergence_s: float | None = None
    wall_s: float = 0.0
    records: int = 0
    pods: list[str] = field(default_factory=list)
    """The pods as last seen, when convergence timed out: what the operator waited for."""

    def tally(self) -> dict[str, int]:
        """The headline counts the issue asks for, sorted out of the violations."""
        stuck = [v for v in self.violations if v.message.startswith(STUCK)]
        return {
            "unsafe_deletions": sum(v.invariant == SAFE_DELETION for v in self.violations),
            "duplicate_attempts": sum(
                v.invariant == CRASH_CONVERGENCE and any(d in v.message for d in DUPLICATES)
                for v in self.violations
            ),
            "stuck_finalizers": sum(any(f in v.message for f in FINALIZERS) for v in stuck),
            "unconverged": sum(not any(f in v.message for f in FINALIZERS) for v in stuck),
        }

    def summary(self) -> dict[str, Any]:
        """The figures a benchmark prints (JSON-able)."""
        return {
            "seed": self.seed,
            "kills": self.kills,
            "violations": len(self.violations),
            **self.tally(),
            "convergence_s": None if self.convergence_s is None else round(self.convergence_s, 2),
            "wall_s": round(self.wall_s, 1),
            "records": self.records,
            "actions": dict(sorted(self.actions.items())),
        }

    def report(self) -> str:
        lines = [f"chaos seed {self.seed} (replay: CKPT_CHAOS_SEED={self.seed}): {self.summary()}"]
        return "\n".join(lines + [str(v) for v in self.violations] + sorted(self.pods))


class Chaos:
    """Drives one chaos scenario in ``cluster``'s namespace; stores live under ``root``."""

    def __init__(
        self,
        cluster: Cluster,
        operator: OperatorProcess,
        observer: Observer,
        root: Path,
        config: ChaosConfig,
    ) -> None:
        self.cluster, self.operator, self.observer = cluster, operator, observer
        self.root, self.config = root, config
        self.rng = random.Random(config.seed)  # noqa: S311 - replayable, not secret
        self.kill_rng = random.Random(config.seed + 1)  # noqa: S311 - kills: their own sequence
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.nodes = {"s0": 1, "s1": 1, "g": config.gang}
        self.steps = dict.fromkeys(self.nodes, 0)
        self.reported = dict.fromkeys(self.nodes, -1)
        self.failures: dict[str, dict[int, str]] = {run: {} for run in self.nodes}
        self.result = ChaosResult(config.seed)

    def run(self) -> ChaosResult:
        started = time.monotonic()
        self.setup()
        actor = threading.Thread(target=self._act_until_stopped, daemon=True)
        actor.start()
        try:
            while self.result.kills < self.config.kills and actor.is_alive():
                self.live_and_die()
                if self.observer.check():
                    break  # a violation: stop early, the seed and the history tell the rest
        finally:
            self._stop.set()
            actor.join()
        if self._error is not None:
            raise self._error
        self.operator.start()
        self._release_all()
        self.result.convergence_s = self.converge()
        self.result.violations += self.observer.verify_stores()
        self.tear_down()
        self.result.wall_s = time.monotonic() - started
        self.result.records = len(self.observer.records)
        self.result.violations = self.observer.verdict() + self.result.violations
        return self.result

    def _act_until_stopped(self) -> None:
        try:
            while not self._stop.is_set():
                self.act()
        except BaseException as exc:  # re-raised by run()
            self._error = exc

    def setup(self) -> None:
        canary = self.root.parent / "canary"
        (canary / "step-0000000001.attempt-0").mkdir(parents=True, exist_ok=True)
        (canary / "step-0000000001.attempt-0" / "model.bin").write_bytes(b"keep" * 64)
        self.observer.watch_canary(canary)
        ignore = [{"action": "Ignore", "onReasons": ["Preempted"]}]
        specs: dict[str, dict[str, Any]] = {
            "s0": {"retention": {"keepLast": 2}},
            "s1": {"consumers": {"reportTimeoutSeconds": 4}},
            "g": {"retention": {"keepLast": 2}, "numNodes": self.config.gang},
        }
        for run, extra in specs.items():
            store = self.root / run
            store.mkdir(parents=True)
            self.observer.watch_store(run, store)
            body = run_body(run, f"file://{store}", max_restarts=100_000, rules=ignore, **extra)
            body["spec"]["restartPolicy"]["maxPreemptions"] = 100_000
            self.cluster.create_run(body)
            self.cluster.consumer(f"c-{run}", run)

    # --- actions ------------------------------------------------------------------------------

    def act(self, tries: int = 4) -> None:
        """One action that applies now (a run without workers cannot fail), of a few drawn;
        runs on its own thread, while the main thread kills."""
        for _ in range(tries):
            action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            run = self.rng.choice(sorted(self.nodes))
            try:
                done = getattr(self, f"_{action}")(run)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                done = False  # raced with the operator (a pod torn down, an object gone)
            if done:
                self.result.actions[action] += 1
                break
        time.sleep(self.rng.uniform(0, 0.2))

    def current(self, run: str) -> tuple[int, list[Body]] | None:
        """The run's newest attempt and its workers, once all exist and none has ended."""
        pods = [
            (ident[1], ident[2], p)
            for p in self.observer.snapshot(PODS).values()
            if (ident := attempt_of(p)) is not None and ident[0] == run
        ]
        if not pods:
            return None
        top = max(a for a, _, _ in pods)
        workers = [p for a, _, p in sorted(pods, key=lambda x: x[:2]) if a == top]
        if len(workers) < self.nodes[run] or not all(live(w) for w in workers):
            return None
        if top in self.failures[run]:
            return None
        return top, workers

    def _rank(self, run: str, rank: int) -> int | None:
        return None if self.nodes[run] == 1 else rank

    def _start(self, run: str) -> bool:
        found = self.current(run)
        if found is None or all(phase(w) == "Running" for w in found[1]):
            return False
        for rank, worker in enumerate(found[1]):
            if phase(worker) != "Running":
                self.cluster.run_pod(run, found[0], self._rank(run, rank))
        return True

    def _fail(self, run: str) -> bool:
        found = self.current(run)
        if found is None:
            return False
        attempt, workers = found
        rank = self._rank(run, self.rng.randrange(len(workers)))
        if self.rng.random() < 0.15:
            self.cluster.fail_pod(run, attempt, 143, pod_reason="Preempted", rank=rank)
            self.failures[run][attempt] = "Ignore"
        else:
            self.cluster.fail_pod(run, attempt, 1, rank=rank)
            self.failures[run][attempt] = "Retry"
        return True

    def _hold(self, run: str) -> bool:
        """A slow kubelet: this worker stays Terminating, alive, once deleted, until released."""
        found = self.current(run)
        if found is None or self.nodes[run] == 1:
            return False
        worker = self.rng.choice(found[1])
        if HOLD in (meta(worker).get("finalizers") or []):
            return False
        self.cluster.hold_pod(str(meta(worker)["name"]))
        return True

    def _release(self, run: str) -> bool:
        held = [
            str(meta(p)["name"])
            for p in self.observer.snapshot(PODS).values()
            if terminating(p) and HOLD in (meta(p).get("finalizers") or [])
        ]
        if not held:
            return False
        self.cluster.release_pod(self.rng.choice(sorted(held)))
        return True

    def _release_all(self) -> None:
        """Release every held pod, as the API server has them now: the observer's snapshot
        may not have seen the actor's last hold yet, and a pod left held never goes."""
        pods: Any = self.cluster.core.list_namespaced_pod(self.cluster.ns)
        for pod in pods.items:
            if HOLD in (pod.metadata.finalizers or []):
                try:
                    self.cluster.release_pod(pod.metadata.name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def _finish_deleted_pods(self) -> None:
        """Remove pods deleted with no finalizer left, as a kubelet (or the pod garbage
        collector, for pods bound to no node) would: this control plane runs neither, and a
        pod deleted while held and then released can stay Terminating with a grace period of
        0, which the operator rightly waits for before it starts the next gang."""
        pods: Any = self.cluster.core.list_namespaced_pod(self.cluster.ns)
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is None or pod.metadata.finalizers:
                continue
            try:
                self.cluster.core.delete_namespaced_pod(
                    pod.metadata.name, self.cluster.ns, grace_period_seconds=0
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _save(self, run: str) -> bool:
        found = self.current(run)
        if found is None:
            return False
        self.steps[run] += 10
        fmt: names.Format = "tar" if self.rng.random() < 0.2 else "dir"
        write_checkpoint(self.root / run, run, self.steps[run], found[0], fmt)
        if self.rng.random() < 0.8:  # the rest: a lost registration, the store scan finds it
            self.cluster.register(run, self.steps[run], found[0], fmt)
        return True

    def _report(self, run: str) -> bool:
        ready = [
            ckpt_key(c)[0]
            for c in self.observer.snapshot(CHECKPOINTS).values()
            if c["spec"]["run"] == run and usable(c)
        ]
        if not ready or max(ready) <= self.reported[run]:
            return False
        self.reported[run] = max(ready)
        self.cluster.report(f"c-{run}", max(ready))
        return True

    def _delete(self, run: str) -> bool:
        candidates = sorted(
            name
            for name, c in self.observer.snapshot(CHECKPOINTS).items()
            if c["spec"]["run"] == run and not terminating(c)
        )
        if not candidates:
            return False
        name = self.rng.choice(candidates)
        if self.rng.random() < 0.3:
            self.cluster.annotate(name, {names.ANNOTATION_FORCE_DELETE: "true"})
        self.cluster.delete(name)
        return True

    def live_and_die(self) -> None:
        """Start the operator and SIGKILL it at a random instant: while it starts up and
        lists (without waiting for it to be live), or after it has worked for a while. It
        stays down for a moment; the actions go on meanwhile."""
        if self.kill_rng.random() < self.config.startup_kills:
            self.operator.start(wait=False)
            time.sleep(self.kill_rng.uniform(0.3, 3.0))
        else:
            self.operator.start()
            time.sleep(self.kill_rng.uniform(0.2, self.config.max_life_s))
        self.operator.kill()
        self.result.kills += 1
        time.sleep(self.kill_rng.uniform(0, 1.0))

    # --- the end ------------------------------------------------------------------------------

    def converge(self) -> float | None:
        """Seconds until nothing is owed; None (and a violation per problem) at the deadline."""
        started = time.monotonic()
        deadline = started + self.config.converge_timeout_s
        while True:
            self._finish_deleted_pods()
            self.observer.check(flush=True)
            owed = convergence.problems(self.observer.checker, self.failures)
            if not owed and self.observer.in_sync():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                self.result.violations += [self._stuck(p) for p in owed]
                self.result.pods = [
                    self._pod_line(p) for p in self.observer.snapshot(PODS).values()
                ] + [_run_line(r) for r in self.observer.snapshot(RUNS).values()]
                return None
            time.sleep(0.5)

    def tear_down(self) -> None:
        """Release the consumers, delete every run: nothing may be left behind.

        The consumers report the largest step there is: a larger one is no report at all and
        would hold every checkpoint back until the consumer counts as silent."""
        for run in self.nodes:
            self.cluster.report(f"c-{run}", MAX_STEP)
        for run in self.nodes:
            self.cluster.delete(run, names.TRAINING_RUNS)

        def empty() -> bool:
            self.observer.check(flush=True)
            return self.observer.in_sync() and not convergence.leftovers(self.observer.checker)

        try:
            wait_for(empty, self.config.converge_timeout_s, "every run to be deleted", every=0.5)
        except AssertionError:
            left = convergence.leftovers(self.observer.checker)
            self.result.violations += [self._stuck(p) for p in left]

    def _pod_line(self, pod: Body) -> str:
        """The pod as the observer saw it last, and whether the API server still has it (a
        quorum read: tells a stale observer from a pod that really stays)."""
        m = meta(pod)
        gone = "Terminating " if terminating(pod) else ""
        grace, node = m.get("deletionGracePeriodSeconds"), (pod.get("spec") or {}).get("nodeName")
        now = self.cluster.pod(str(m.get("name")))
        api = "gone" if now is None else f"resourceVersion {now.metadata.resource_version}"
        return (
            f"pod {m.get('name')}: {gone}{phase(pod)} finalizers {m.get('finalizers')} "
            f"grace {grace} node {node} resourceVersion {m.get('resourceVersion')} (API: {api})"
        )

    def _stuck(self, problem: str) -> Violation:
        return Violation(CRASH_CONVERGENCE, self.observer.checker.revision, f"{STUCK}{problem}")


def _run_line(run: Body) -> str:
    """What a run that did not converge says of itself: its phase, last attempt, conditions."""
    status = run.get("status") or {}
    last = (status.get("attempts") or [{}])[-1]
    conditions = [
        f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions") or []
    ]
    return (
        f"run {meta(run).get('name')}: phase {status.get('phase')}, nextAttemptAfter "
        f"{status.get('nextAttemptAfter')}, last attempt {last}; {'; '.join(conditions)}"
    )
