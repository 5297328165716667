"""Garbage-collection benchmark on a real local control plane and the real operator process.

1. Report-to-delete latency: checkpoints held back only by a consumer; the consumer reports a
   greater step; time until the checkpoint's storage is gone (p50/p90 over ``--samples``).
2. Deletion throughput: ``--count`` Ready checkpoints (tiny directories) are deleted at once;
   checkpoints deleted per second, from the first DELETE until the last storage is gone.

The last line printed is one JSON object with the figures.

    .venv/bin/python benchmarks/gc.py [--count 10000] [--samples 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ckpt_operator.api import crdgen
from ckpt_operator.storage import layout
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.checkpoints import write_checkpoint
from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verified(operator: OperatorProcess) -> int:
    """Checkpoints the operator verified Ready so far, from its metrics (a LIST of 10,000
    objects every second would load the API server more than the operator does)."""
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith('ckpt_operator_checkpoints_verified_total{result="ready"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def make_checkpoints(
    c: Cluster,
    op: OperatorProcess,
    root: Path,
    run_name: str,
    steps: range,
    pool: ThreadPoolExecutor,
) -> tuple[dict[str, Any], dict[int, str]]:
    run = c.create_run(run_body(run_name, f"file://{root}/{run_name}"))
    before = verified(op)
    store = Store.from_uri(f"file://{root}/{run_name}")
    for s in steps:
        write_checkpoint(store, run_name, s, payload=b"x" * 64)
    names = dict(zip(steps, pool.map(lambda s: c.register(run, s), steps), strict=True))
    wait_for(
        lambda: verified(op) - before >= len(steps),
        1800,
        f"{len(steps)} checkpoints Ready",
        every=1.0,
    )
    return run, names


def latency(
    c: Cluster, op: OperatorProcess, root: Path, samples: int, pool: ThreadPoolExecutor
) -> list[float]:
    """Each report of step i+1 releases exactly checkpoint i (held only by the consumer)."""
    c.consumer("infer", "lat", loaded=1)
    _, names = make_checkpoints(c, op, root, "lat", range(1, samples + 2), pool)
    for s in range(1, samples + 1):
        c.delete(names[s])
    for s in range(1, samples + 1):
        wait_for(
            lambda s=s: (c.checkpoint(names[s]) or {}).get("status", {}).get("blockedBy"),
            60,
            f"step {s} blocked",
        )
    times = []
    for s in range(1, samples + 1):
        path = root / "lat" / layout.CheckpointName(s, 0, "dir").path
        assert path.exists()
        c.report("infer", s + 1)
        start = time.monotonic()
        wait_for(lambda path=path: not path.exists(), 30, f"step {s} deleted", every=0.002)
        times.append(time.monotonic() - start)
        time.sleep(0.05)
    return times


def throughput(
    c: Cluster, op: OperatorProcess, root: Path, count: int, pool: ThreadPoolExecutor
) -> float:
    started = time.monotonic()
    _, names = make_checkpoints(c, op, root, "bulk", range(1, count + 2), pool)
    log(f"{count + 1} checkpoints Ready in {time.monotonic() - started:.1f} s")
    victims = [names[s] for s in range(1, count + 1)]  # the newest (count+1) stays protected
    store_dir = root / "bulk"
    start = time.monotonic()
    list(pool.map(c.delete, victims))
    log(f"{count} DELETE requests sent in {time.monotonic() - start:.1f} s")
    wait_for(
        lambda: sum(1 for _ in store_dir.iterdir()) == 1, 1800, "all storage deleted", every=0.2
    )
    elapsed = time.monotonic() - start
    wait_for(lambda: _records_left(c) == 1, 600, "all records gone", every=5.0)
    return count / elapsed


def _records_left(c: Cluster) -> int:
    try:
        left = sorted(n for n in c.checkpoint_names() if n.startswith("bulk-"))
    except ApiException:  # a timeout under load: try again
        return -1
    if len(left) > 1:
        finalizers = (c.checkpoint(left[0]) or {}).get("metadata", {}).get("finalizers")
        log(f"{len(left)} records left, e.g. {left[0]} (finalizers {finalizers})")
    return len(left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt-gc-bench-") as tmp:
        work = Path(tmp)
        root = work / "stores"
        root.mkdir()
        plane = ControlPlane(
            workdir=work / "plane",
            controller_manager=False,
            kwok=False,
            crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS],
        )
        with plane, api_client(plane.kubeconfig) as api:
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name="bench"))
            )
            c = Cluster(api, "bench")
            operator = OperatorProcess(
                plane.kubeconfig,
                work / "operator.log",
                namespaces=["bench"],
                allowed_roots=[f"file://{root}"],
            )
            with operator, ThreadPoolExecutor(8) as pool:
                times = latency(c, operator, root, args.samples, pool)
                log(f"report-to-delete: {', '.join(f'{t * 1000:.0f}' for t in times)} ms")
                rate = throughput(c, operator, root, args.count, pool)
    result = {
        "report_to_delete_p50_s": round(statistics.median(times), 4),
        "report_to_delete_p90_s": round(statistics.quantiles(times, n=10)[-1], 4),
        "samples": len(times),
        "deletes_per_s": round(rate, 1),
        "checkpoints_deleted": args.count,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
