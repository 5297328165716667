"""Scale: many TrainingRuns and Checkpoints, then restarts and deletions under that load.

On a real local control plane with the real operator process:

1. baseline: with almost nothing stored, API requests per restart and per deletion;
2. load: ``--runs`` TrainingRuns and ``--checkpoints`` committed checkpoints (tiny files,
   Checkpoint objects created through the API by 16 threads), created while the operator
   runs, as trainers would register them: at most ``--backlog`` wait for a verdict at any time
   (read from the operator's metrics), so the load comes at the rate the operator sustains on
   this machine rather than as one burst that the API server, the operator and this script
   share two cores for; a busy API server's 429/5xx answers are retried, as the SDK does;
3. first pass: until the operator has verified every checkpoint (Ready with its own record)
   and started every run's attempt 0 (verified per second, from the first creation).
   ``--while-down`` creates the load with the operator stopped instead: it then meets every
   object at once when it starts (the backlog after a long outage; see docs/operations.md);
4. restart: the operator is SIGKILLed and started again over what it already handled: start to
   liveness, and to the first handled event (Kopf handles nothing before every index is listed:
   "indexes ready");
5. restarts: every run's attempt-0 pod fails, half of them one by one at ``--restart-rate``
   a second (failures as they come in steady operation), then the other half at once (a burst
   that queues on the API server's write throughput); latency until this script's watch sees
   the attempt-1 pod (p50/p99 of each), and requests per restart;
6. deletions: ``--deletions`` checkpoints (the oldest of each run) deleted at once;
   deletions/s until every file is gone, and requests per deletion.

Operator RSS (current and peak) is sampled throughout. The last line printed is one JSON
object with the figures. Usage::

    .venv/bin/python benchmarks/scale.py [--runs 1000] [--checkpoints 50000] [--deletions 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import crdgen, names
from ckpt_operator.kube.objects import checkpoint_body
from ckpt_operator.storage.layout import CheckpointName
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import run_body
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.measure import (
    PodWatch,
    fail_all,
    fail_paced,
    percentile,
    request_counts,
)
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for
from ckpt_operator.views.checkpoint import operator_verified

T = TypeVar("T")

NS = "scale"
TRANSIENT = (429, 500, 502, 503, 504)
OPERATOR_RESOURCES = ("pods", "trainingruns", "checkpoints", "events", "services")


def log(message: str) -> None:
    print(message, flush=True)


def rss_mib(pid: int) -> tuple[float, float]:
    """``(current, peak)`` resident memory of a process, MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def operator_requests(before: Counter[Any], after: Counter[Any]) -> int:
    """Requests to the resources the operator works on, minus this script's own kinds of
    request (pod status writes, LISTs and GETs it polls with)."""
    total = 0
    for (resource, verb, _), n in (after - before).items():
        if resource.split("/")[0] not in OPERATOR_RESOURCES:
            continue
        if resource == "pods/status" and verb == "PATCH":
            continue  # the script plays the kubelet
        if verb in ("LIST", "GET"):
            continue  # the script polls; the operator reads its indexes
        total += n
    return total


def retried(create: Callable[[], T]) -> T | None:
    """``create()``, again after a busy API server's answer; None when the object exists: an
    attempt that timed out created it after all, or the operator's store scan registered the
    files first (as it may a real trainer's; the SDK takes that as registered too)."""
    for attempt in range(8):
        try:
            return create()
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status not in TRANSIENT or attempt == 7:
                raise
            time.sleep(min(8.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


class Backlog:
    """Admits a creation while fewer than ``limit`` created checkpoints wait for the operator's
    verdict (its ``ckpt_operator_checkpoints_verified_total``); no limit without ``url``."""

    def __init__(self, url: str | None, limit: int) -> None:
        self.url, self.limit = url, limit
        self.created = self.verified = 0
        self.read_at = 0.0
        self.lock = threading.Lock()

    def admit(self) -> None:
        while True:
            with self.lock:
                if self.url is None or self.created - self.verified < self.limit:
                    self.created += 1
                    return
                if time.monotonic() - self.read_at > 2.0:  # a scrape costs the operator CPU
                    self.verified, self.read_at = verified_total(self.url), time.monotonic()
            time.sleep(0.05)


def verified_total(url: str) -> int:
    """Checkpoints the operator has given a verdict since it started, from its metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    prefix = "ckpt_operator_checkpoints_verified_total{"
    return int(
        sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))
    )


def create_runs(
    api: Any, prefix: str, count: int, root: Path, pool: ThreadPoolExecutor
) -> list[str]:
    custom = client.CustomObjectsApi(api)
    run_names = [f"{prefix}-{i}" for i in range(count)]

    def create(name: str) -> None:
        body = run_body(name, f"file://{root}/{name}", max_restarts=10)
        retried(
            lambda: custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, names.TRAINING_RUNS, body
            )
        )

    list(pool.map(create, run_names))
    return run_names


Made = tuple[str, Path]
"""A checkpoint the benchmark made: its object name and its directory."""


def create_checkpoints(
    api: Any,
    runs: list[str],
    total: int,
    root: Path,
    pool: ThreadPoolExecutor,
    backlog: Backlog | None = None,
) -> dict[str, list[Made]]:
    """``total`` committed checkpoints spread over ``runs``; by run, oldest first."""
    custom = client.CustomObjectsApi(api)
    per_run = -(-total // len(runs))
    jobs = [(run, 10 * (i + 1)) for run in runs for i in range(per_run)][:total]

    def make(job: tuple[str, int]) -> Made:
        run, step = job
        name = CheckpointName(step, 0, "dir")
        if backlog is not None:
            backlog.admit()
        write_checkpoint(root / run, run, step, payload=b"x" * 64)
        body = checkpoint_body(run, name)
        retried(
            lambda: custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, names.CHECKPOINTS, body
            )
        )
        return name.object_name(run), root / run / name.path

    by_run: dict[str, list[Made]] = {run: [] for run in runs}
    for (run, _), made in zip(jobs, pool.map(make, jobs), strict=True):
        by_run[run].append(made)
    return by_run


def verified_count(api: Any, run_prefix: str) -> int:
    """Checkpoints of runs named ``run_prefix…`` the operator has verified itself."""
    custom = client.CustomObjectsApi(api)
    count, token = 0, None
    while True:
        try:
            page = custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, names.CHECKPOINTS, limit=500, _continue=token
            )
        except ApiException:
            return -1  # a busy API server: ask again later
        count += sum(
            operator_verified(item.get("status") or {}, item["metadata"].get("generation"))
            for item in page["items"]
            if item["spec"]["run"].startswith(run_prefix)
        )
        token = page["metadata"].get("continue")
        if not token:
            return count


def first_handled(api: Any, root: Path) -> None:
    """Create a run and wait until the operator gives it a status."""
    custom = client.CustomObjectsApi(api)
    body = run_body("sentinel", f"file://{root}/sentinel")
    custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, NS, names.TRAINING_RUNS, body
    )

    def handled() -> bool:
        obj = custom.get_namespaced_custom_object(
            names.GROUP, names.VERSION, NS, names.TRAINING_RUNS, "sentinel"
        )
        return bool((obj.get("status") or {}).get("phase"))

    wait_for(handled, 600, "the sentinel run to be handled", every=0.2)


def pods_exist(api: Any, wanted: set[str]) -> bool:
    present = {p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(NS).items}
    return wanted <= present


def restarts(api: Any, runs: list[str], per_s: float | None = None) -> tuple[list[float], float]:
    """Fail every attempt-0 pod, ``per_s`` a second or all at once; latencies to the attempt-1
    pod, and requests per restart."""
    before = request_counts(api)
    watcher = PodWatch(api, NS, names.LABEL_RUN)
    pods = [names.attempt_pod_name(r, 0) for r in runs]
    started = fail_paced(api, NS, pods, per_s) if per_s else fail_all(api, NS, pods)
    nxt = {names.attempt_pod_name(r, 0): names.attempt_pod_name(r, 1) for r in runs}
    wait_for(lambda: all(p in watcher.seen for p in nxt.values()), 900, "attempt-1 pods", 0.1)
    watcher.stop()
    time.sleep(5)  # let the operator finish the writes of these restarts
    per_restart = operator_requests(before, request_counts(api)) / len(runs)
    return [watcher.seen[nxt[p]] - t for p, t in started.items()], per_restart


def deletions(api: Any, victims: list[Made], pool: ThreadPoolExecutor) -> tuple[float, float]:
    """Delete ``victims``; deletions/s until their files are gone, and requests per deletion."""
    custom = client.CustomObjectsApi(api)
    before = request_counts(api)
    start = time.monotonic()
    list(
        pool.map(
            lambda n: custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, names.CHECKPOINTS, n
            ),
            [name for name, _ in victims],
        )
    )
    left = [path for _, path in victims]

    def gone() -> bool:
        left[:] = [path for path in left if path.exists()]
        return not left

    wait_for(gone, 3600, "all storage deleted", every=0.5)
    rate = len(victims) / (time.monotonic() - start)
    time.sleep(5)
    return rate, operator_requests(before, request_counts(api)) / len(victims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=50_000)
    parser.add_argument("--deletions", type=int, default=10_000)
    parser.add_argument(
        "--while-down", action="store_true", help="create the load with the operator stopped"
    )
    parser.add_argument(
        "--backlog", type=int, default=200, help="most checkpoints awaiting a verdict at once"
    )
    parser.add_argument(
        "--restart-rate", type=float, default=10.0, help="paced failures a second (step 5)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="scale-", dir="/tmp"))
    plane = ControlPlane(workdir=root / "plane", crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS])
    stores = root / "stores"
    figures: dict[str, Any] = {
        "runs": args.runs,
        "checkpoints": args.checkpoints,
        "while_down": args.while_down,
        "backlog": None if args.while_down else args.backlog,
    }
    with plane, api_client(plane.kubeconfig) as api, ThreadPoolExecutor(16) as pool:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NS))
        )
        operator = OperatorProcess(
            plane.kubeconfig,
            root / "operator.log",
            namespaces=[NS],
            allowed_roots=("file:///tmp/",),
        )
        try:
            # 1. baseline: a few runs, a few checkpoints
            operator.start()
            small_runs = create_runs(api, "base", 20, stores, pool)
            small = create_checkpoints(api, small_runs, 200, stores, pool)
            wait_for(lambda: verified_count(api, "base-") >= 200, 600, "base verified", 1)
            small_pods = {names.attempt_pod_name(r, 0) for r in small_runs}
            wait_for(lambda: pods_exist(api, small_pods), 300, "pods")
            time.sleep(5)
            _, figures["requests_per_restart_small"] = restarts(api, small_runs)
            victims = [ckpts[0] for ckpts in small.values()]
            _, figures["requests_per_deletion_small"] = deletions(api, victims, pool)
            operator.stop()
            log(f"baseline: {figures}")

            # 2. the load, with the operator running (or down: the backlog of an outage)
            if not args.while_down:
                operator.start()
            started = time.monotonic()
            runs = create_runs(api, "run", args.runs, stores, pool)
            metrics_url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
            backlog = Backlog(None if args.while_down else metrics_url, args.backlog)
            by_run = create_checkpoints(api, runs, args.checkpoints, stores, pool, backlog)
            took = time.monotonic() - started
            log(f"created {args.runs} runs and {args.checkpoints} checkpoints in {took:.0f} s")

            # 3. first pass: everything is new to the operator
            if args.while_down:
                started = time.monotonic()
                operator.start(timeout=600)
            wait_for(
                lambda: verified_count(api, "run-") >= args.checkpoints,
                7200,
                "every checkpoint verified",
                5,
            )
            figures["first_pass_verified_s"] = round(time.monotonic() - started, 2)
            rate = args.checkpoints / figures["first_pass_verified_s"]
            figures["verified_per_s"] = round(rate, 1)
            wait_for(
                lambda: pods_exist(api, {names.attempt_pod_name(r, 0) for r in runs}),
                1800,
                "attempt-0 pods",
                2,
            )
            figures["first_pass_all_started_s"] = round(time.monotonic() - started, 2)
            log(f"first pass: {figures}")

            # 4. restart over what it has handled
            operator.kill()
            started = time.monotonic()
            operator.start(timeout=600)
            pid = operator.pid
            figures["live_s"] = round(time.monotonic() - started, 2)
            first_handled(api, stores)
            figures["indexes_ready_s"] = round(time.monotonic() - started, 2)
            figures["rss_after_start_mib"] = round(rss_mib(pid)[0], 1)
            log(f"restart: {figures}")
            time.sleep(10)

            # 5. restarts under load: paced, then a burst
            half = len(runs) // 2
            for how, group, per_s in (
                ("paced", runs[:half], args.restart_rate),
                ("burst", runs[half:], None),
            ):
                lat, figures[f"requests_per_restart_{how}"] = restarts(api, group, per_s)
                figures[f"restart_{how}_p50_s"] = round(percentile(lat, 0.5), 3)
                figures[f"restart_{how}_p99_s"] = round(percentile(lat, 0.99), 3)
                figures[f"restart_{how}_mean_s"] = round(statistics.mean(lat), 3)
                time.sleep(10)
            log(f"restarts: {figures}")

            # 6. deletions under load: every run's newest stays (it is protected); the oldest go
            # first, round robin
            oldest_first = [
                ckpts[i]
                for i in range(max(len(c) for c in by_run.values()))
                for ckpts in by_run.values()
                if i < len(ckpts) - 1
            ]
            victims = oldest_first[: args.deletions]
            figures["deletions"] = len(victims)
            rate, per_deletion = deletions(api, victims, pool)
            figures["deletions_per_s"], figures["requests_per_deletion"] = rate, per_deletion
            current, peak = rss_mib(pid)
            figures["rss_mib"], figures["rss_peak_mib"] = round(current, 1), round(peak, 1)
        finally:
            operator.stop()  # on a failure too: an orphaned operator spins on a dead API
    figures["cpu_count"] = os.cpu_count()
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
