"""Chaos, the long version: the operator SIGKILLed ``--kills`` times (default 500) at random
instants while runs fail and restart (single-node and a gang), checkpoints are saved,
reported, expired and deleted; the scenario of ``tests/integration/test_chaos.py``.

Starts its own control plane (etcd + kube-apiserver + controller-manager) and plays the
scenario in rounds of ``--round-kills`` kills, each in a fresh namespace with a fresh
operator process, ending with convergence (its time is one sample) and every run deleted.
One seed (``--seed``, else ``CKPT_CHAOS_SEED``, else random) drives every round: round ``i``
uses ``seed + i``, replayable alone with ``CKPT_CHAOS_SEED=<seed + i>`` in the test.

Required: 0 unsafe deletions, 0 duplicate attempts, 0 stuck finalizers, every round
converges; the exit status is 1 otherwise. The last line printed is one JSON object with the
figures. Usage::

    .venv/bin/python benchmarks/chaos.py [--kills 500] [--seed N] [--round-kills 25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes import client

from ckpt_operator.api import crdgen
from ckpt_operator.testing.chaos import Chaos, ChaosConfig, ChaosResult
from ckpt_operator.testing.cluster import Cluster
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.measure import percentile
from ckpt_operator.testing.observer import Observer
from ckpt_operator.testing.operator_process import OperatorProcess

SPEED = {
    "CKPT_MAINTENANCE_INTERVAL_S": "1",
    "CKPT_SCAN_INTERVAL_S": "1",
    "CKPT_SWEEP_GRACE_S": "30",
}
"""The same fast intervals as the test, so retention and scans happen between kills."""


def log(message: str) -> None:
    print(message, flush=True)


def one_round(plane: ControlPlane, api: Any, workdir: Path, config: ChaosConfig) -> ChaosResult:
    """One scenario in a fresh namespace, with an operator of its own."""
    namespace = f"chaos-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    root = workdir / namespace / "allowed"
    root.mkdir(parents=True)
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / namespace / "operator.log",
        namespaces=[namespace],
        allowed_roots=[f"file://{root}"],
    )
    try:
        with Observer(plane.kubeconfig, namespace) as observer:
            result = Chaos(Cluster(api, namespace), operator, observer, root, config).run()
    finally:
        operator.stop()
        core.delete_namespace(namespace)
    if "Traceback" in operator.log_text():
        log(f"a Traceback in {operator.log_path}")
        result.actions["operator tracebacks"] += 1
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--round-kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--gang", type=int, default=3, help="workers per attempt of the gang")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else os.environ.get("CKPT_CHAOS_SEED")
    seed = int(seed) if seed is not None else random.randrange(2**32)
    log(f"chaos seed {seed} (replay: --seed {seed}); {args.kills} kills")
    os.environ.update(SPEED)
    results: list[ChaosResult] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-bench-") as tmp:
        workdir = Path(tmp)
        crds = [crdgen.crd(d) for d in crdgen.DEFINITIONS]
        plane = ControlPlane(workdir=workdir / "plane", controller_manager=True, crds=crds)
        with plane, api_client(plane.kubeconfig) as api:
            while sum(r.kills for r in results) < args.kills:
                kills = min(args.round_kills, args.kills - sum(r.kills for r in results))
                config = ChaosConfig(seed=seed + len(results), kills=kills, gang=args.gang)
                result = one_round(plane, api, workdir, config)
                results.append(result)
                log(result.report())
    figures = summarize(seed, results, time.monotonic() - started)
    log(json.dumps(figures))
    required = ("unsafe_deletions", "duplicate_attempts", "stuck_finalizers", "unconverged")
    return 0 if not any(figures[k] for k in required) and not figures["violations"] else 1


def summarize(seed: int, results: list[ChaosResult], wall_s: float) -> dict[str, Any]:
    """The figures over all rounds: counts summed, convergence times as median and p99."""
    tally: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    for result in results:
        tally.update(result.tally())
        actions.update(result.actions)
    converged = [r.convergence_s for r in results if r.convergence_s is not None]
    return {
        "seed": seed,
        "kills": sum(r.kills for r in results),
        "rounds": len(results),
        **{k: tally[k] for k in sorted(tally)},
        "violations": sum(len(r.violations) for r in results),
        "converged_rounds": f"{len(converged)}/{len(results)}",
        "convergence_s_median": round(statistics.median(converged), 2) if converged else None,
        "convergence_s_p99": round(percentile(converged, 0.99), 2) if converged else None,
        "wall_s": round(wall_s, 1),
        "actions": dict(sorted(actions.items())),
    }


if __name__ == "__main__":
    sys.exit(main())
