"""Restart latency and API cost of a restart: the operator against a minimal watch->create floor.

Starts its own control plane (etcd + kube-apiserver) and the operator as a real process, then:

1. latency: N runs (default 100) with zero backoff; every attempt-0 pod is marked Failed at
   once; for each, the time from just before the Failed status write to this script's watch
   seeing the attempt-1 pod. The same is done for a floor: a separate process that watches
   pods and, on Failed, creates the next pod (the least any controller must do). Their p50
   ratio is the overhead the operator adds.
2. cost: 10 runs each restarted once, with 10 and with 10,000 existing (Ready, verified)
   checkpoints spread over them; API requests per restart are the change of the API server's
   ``apiserver_request_total`` (pods, trainingruns, checkpoints, events; WATCH excluded)
   minus this script's own pod status writes and reads (the full breakdown is printed too).
   The target is equal counts: selection reads Kopf indexes, never the API.

With ``--nodes N`` every run is a gang of N workers: one worker of each is marked Failed, and
the latency is until this script sees *all* N workers of attempt 1 (the operator deletes the
other N-1 first; with no kubelet they go at once). No floor is measured for gangs.

The last line printed is one JSON object with the figures. Usage::

    .venv/bin/python benchmarks/restart_latency.py [--runs 100] [--checkpoints 10000] [--nodes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from ckpt_operator.api import crdgen, names
from ckpt_operator.storage import layout
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import run_body
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.measure import PodWatch, fail_all, percentile, request_counts
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

NS = "bench"
FLOOR_LABEL = "bench.ckpt.dev/floor"
RELEVANT = ("pods", "trainingruns", "checkpoints", "events")
"""The resources a restart may touch; requests to them are counted per restart."""


def log(message: str) -> None:
    print(message, flush=True)


def latencies(
    started: dict[str, float], seen: dict[str, float], nxt: Callable[[str], str]
) -> list[float]:
    return [seen[nxt(name)] - t for name, t in started.items()]


# --- the floor: a minimal watch -> create client, in its own process --------------------------


async def floor_client(kubeconfig: str) -> None:
    """On every Failed ``<x>-attempt-<n>`` pod, create ``<x>-attempt-<n+1>``; nothing else."""
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig
    from kubernetes_asyncio import watch as awatch

    await aconfig.load_kube_config(config_file=kubeconfig)
    async with aclient.ApiClient() as api:
        core = aclient.CoreV1Api(api)
        listing = await core.list_namespaced_pod(NS, label_selector=FLOOR_LABEL)
        version = listing.metadata.resource_version
        done: set[str] = set()
        tasks: set[asyncio.Task[Any]] = set()
        print("READY", flush=True)

        async def create(name: str) -> None:
            try:
                await core.create_namespaced_pod(NS, floor_pod(name))
            except aclient.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise

        while True:
            w = awatch.Watch()
            async for event in w.stream(
                core.list_namespaced_pod,
                NS,
                label_selector=FLOOR_LABEL,
                resource_version=version,
                timeout_seconds=60,
            ):
                pod = event["object"]
                version = pod.metadata.resource_version
                if pod.status.phase != "Failed" or pod.metadata.name in done:
                    continue
                done.add(pod.metadata.name)
                base, _, n = pod.metadata.name.rpartition("-attempt-")
                task = asyncio.create_task(create(f"{base}-attempt-{int(n) + 1}"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def floor_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {FLOOR_LABEL: "yes"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "trainer", "image": "trainer:latest"}],
        },
    }


# --- API request accounting -------------------------------------------------------------------


def workers(run: str, attempt: int, nodes: int) -> list[str]:
    return [names.attempt_pod_name(run, attempt, rank, nodes) for rank in range(nodes)]


def create_runs(api: Any, prefix: str, count: int, root: Path, nodes: int = 1) -> list[str]:
    custom = client.CustomObjectsApi(api)
    run_names = [f"{prefix}-{i}" for i in range(count)]

    def create(name: str) -> None:
        store = root / name
        store.mkdir(parents=True, exist_ok=True)
        body = run_body(name, f"file://{store}", max_restarts=1000, numNodes=nodes)
        custom.create_namespaced_custom_object(names.GROUP, names.VERSION, NS, "trainingruns", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, run_names))
    return run_names


def pods_exist(api: Any, run_names: Iterable[str]) -> bool:
    core = client.CoreV1Api(api)
    present = {p.metadata.name for p in core.list_namespaced_pod(NS).items}
    return set(run_names) <= present


def add_checkpoints(api: Any, runs: list[str], total: int, root: Path) -> None:
    """``total`` committed, registered checkpoints spread evenly over ``runs``."""
    custom = client.CustomObjectsApi(api)
    jobs = [(runs[i % len(runs)], 10 * (i // len(runs) + 1)) for i in range(total)]
    for run, step in jobs:
        write_checkpoint(root / run, run, step, 0)

    def register(job: tuple[str, int]) -> None:
        run, step = job
        body = {
            "apiVersion": names.API_VERSION,
            "kind": "Checkpoint",
            "metadata": {
                "name": names.checkpoint_object_name(run, step, 0),
                "labels": {names.LABEL_RUN: run},
            },
            "spec": {
                "run": run,
                "step": step,
                "attempt": 0,
                "path": layout.CheckpointName(step, 0, "dir").path,
            },
        }
        try:
            custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, "checkpoints", body
            )
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(register, jobs))


def settled(api: Any, quiet_s: float = 5.0, timeout: float = 3600) -> None:
    """Wait until the operator stops writing checkpoints (verification done), by /metrics:
    listing 10,000 objects to poll their phases would load the API server more than the
    operator does."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        counts = request_counts(api)
        writes = sum(  # refused registrations (409) of the store scan are not work
            n
            for (r, v, code), n in counts.items()
            if r.startswith("checkpoints") and v != "GET" and code != "409"
        )
        if writes != last:
            last, since = writes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(1)
    raise TimeoutError("the operator did not settle")


def runs_at(api: Any, runs: list[str], attempt: int, latest_step: int | None = None) -> bool:
    custom = client.CustomObjectsApi(api)
    for run in runs:
        status = (
            custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, NS, "trainingruns", run
            ).get("status")
            or {}
        )
        if status.get("attempt") != attempt or not status.get("attempts"):
            return False
        if status["attempts"][-1].get("attempt") != attempt:
            return False
        if (
            latest_step is not None
            and (status.get("latestCheckpoint") or {}).get("step") != latest_step
        ):
            return False
    return True


def measure_cost(
    api: Any, prefix: str, checkpoints: int, root: Path, runs: int = 10, nodes: int = 1
) -> dict[str, Any]:
    """API requests per restart for ``runs`` runs holding ``checkpoints`` checkpoints."""
    run_names = create_runs(api, prefix, runs, root, nodes)
    first = [p for n in run_names for p in workers(n, 0, nodes)]
    wait_for(lambda: pods_exist(api, first), 120, "pods")
    started = time.monotonic()
    add_checkpoints(api, run_names, checkpoints, root)
    newest = 10 * -(-checkpoints // runs)
    settled(api)
    wait_for(lambda: runs_at(api, run_names, 0, newest), 120, "latestCheckpoint", 0.5)
    log(
        f"  {checkpoints} checkpoints registered and verified in {time.monotonic() - started:.0f} s"
    )
    time.sleep(3)  # let the operator settle
    before = request_counts(api)
    fail_all(api, NS, [names.attempt_pod_name(n, 0, nodes - 1, nodes) for n in run_names])
    second = [p for n in run_names for p in workers(n, 1, nodes)]
    wait_for(lambda: pods_exist(api, second), 60, "restarts")
    wait_for(lambda: runs_at(api, run_names, 1), 60, "attempt 1 recorded", 0.1)
    time.sleep(2)
    after = request_counts(api)
    delta = after - before
    breakdown = {f"{r} {v} {c}": n for (r, v, c), n in sorted(delta.items())}
    for key in list(delta):
        # Our own writes (the failures) and the polling above are not the operator's, nor are
        # the API server's own requests (e.g. the LimitRanger admission plugin's LIST).
        ours = key[0] == "pods/status" and key[1] == "PATCH"
        polling = key[0] in ("trainingruns", "pods") and key[1] in ("GET", "LIST")
        if ours or polling or key[0].split("/")[0] not in RELEVANT:
            del delta[key]
    per_restart = sum(delta.values()) / runs
    log(f"  {checkpoints} checkpoints: {per_restart:.2f} requests per restart {breakdown}")
    return {"per_restart": per_restart, "breakdown": breakdown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1, help="workers per attempt (a gang)")
    parser.add_argument("--floor-client", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_client:
        asyncio.run(floor_client(args.floor_client))
        return

    root = Path(tempfile.mkdtemp(prefix="restart-latency-", dir="/tmp"))
    plane = ControlPlane(workdir=root / "plane", crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS])
    log(f"starting the control plane in {root}")
    with plane, api_client(plane.kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        operator = OperatorProcess(
            plane.kubeconfig,
            root / "operator.log",
            namespaces=[NS],
            allowed_roots=("file:///tmp/",),
        )
        operator.start()
        try:
            # 1a. the operator
            nodes = args.nodes
            runs = create_runs(api, "lat", args.runs, root / "stores", nodes)
            everyone = [p for r in runs for p in workers(r, 0, nodes)]
            wait_for(lambda: pods_exist(api, everyone), 300, "attempt-0 pods")
            time.sleep(2)
            watcher = PodWatch(api, NS, names.LABEL_RUN)
            victims = {names.attempt_pod_name(r, 0, nodes - 1, nodes): r for r in runs}
            started = fail_all(api, NS, victims)
            successors = {v: workers(r, 1, nodes) for v, r in victims.items()}
            wait_for(
                lambda: all(p in watcher.seen for ps in successors.values() for p in ps),
                300,
                "attempt-1 pods",
                0.05,
            )
            watcher.stop()
            operator_lat = [
                max(watcher.seen[p] for p in successors[v]) - t for v, t in started.items()
            ]
            nxt = lambda name: name.replace("-attempt-0", "-attempt-1")  # noqa: E731

            # 1b. the floor (single-node only: it knows nothing of gangs)
            floor_lat = operator_lat if nodes > 1 else measure_floor(api, plane, args.runs, nxt)
            p50, p99 = percentile(operator_lat, 0.5), percentile(operator_lat, 0.99)
            f50, f99 = percentile(floor_lat, 0.5), percentile(floor_lat, 0.99)
            mean = statistics.mean(operator_lat)
            log(f"operator: p50 {p50:.3f} s, p99 {p99:.3f} s, mean {mean:.3f} s (nodes={nodes})")
            if nodes == 1:
                log(f"floor:    p50 {f50:.3f} s, p99 {f99:.3f} s")
                log(f"ratio p50 {p50 / f50:.2f}, p99 {p99 / f99:.2f} (N={args.runs})")

            # 2. API requests per restart
            small = measure_cost(api, "few", 10, root / "stores", nodes=nodes)
            large = measure_cost(api, "many", args.checkpoints, root / "stores", nodes=nodes)
        finally:
            operator.stop()
    figures = {
        "n_runs": args.runs,
        "nodes": args.nodes,
        "p50_s": round(p50, 4),
        "p99_s": round(p99, 4),
        "requests_per_restart_10": small["per_restart"],
        "requests_per_restart_large": large["per_restart"],
        "checkpoints_large": args.checkpoints,
    }
    if args.nodes == 1:
        figures.update(
            floor_p50_s=round(f50, 4),
            floor_p99_s=round(f99, 4),
            floor_ratio=round(p50 / f50, 3),
            floor_ratio_p99=round(p99 / f99, 3),
        )
    print(json.dumps(figures), flush=True)


def measure_floor(
    api: Any, plane: ControlPlane, runs: int, nxt: Callable[[str], str]
) -> list[float]:
    """Restart latencies of a minimal watch -> create client, in its own process."""
    core = client.CoreV1Api(api)
    floor = subprocess.Popen(
        [sys.executable, __file__, "--floor-client", str(plane.kubeconfig)],
        stdout=subprocess.PIPE,
    )
    try:
        assert floor.stdout is not None
        assert floor.stdout.readline().strip() == b"READY"
        floor_pods = [f"floor-{i}-attempt-0" for i in range(runs)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: core.create_namespaced_pod(NS, floor_pod(n)), floor_pods))
        wait_for(lambda: pods_exist(api, floor_pods), 120, "floor pods")
        time.sleep(2)
        watcher = PodWatch(api, NS, FLOOR_LABEL)
        started = fail_all(api, NS, floor_pods)
        wait_for(lambda: all(nxt(p) in watcher.seen for p in floor_pods), 300, "floor", 0.05)
        watcher.stop()
        return latencies(started, watcher.seen, nxt)
    finally:
        floor.kill()
        floor.wait()


if __name__ == "__main__":
    main()
