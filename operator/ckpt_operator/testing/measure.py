"""Measuring the operator from outside, for benchmarks: watch latencies and API request counts.

Benchmarks play the kubelet (pod status writes) and watch for the pods the operator creates;
the API server's own ``apiserver_request_total`` counts what every client sent.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, watch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


class PodWatch:
    """Records when this client first sees each pod (ADDED), from a background thread."""

    def __init__(self, api: Any, namespace: str, label_selector: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.label_selector = label_selector
        self._stop = threading.Event()
        listing: Any = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        self.version = listing.metadata.resource_version
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            for event in w.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=self.label_selector,
                resource_version=self.version,
                timeout_seconds=30,
            ):
                now = time.monotonic()
                pod = event["object"]
                self.version = pod.metadata.resource_version
                if event["type"] == "ADDED":
                    with self.lock:
                        self.seen.setdefault(pod.metadata.name, now)
                if self._stop.is_set():
                    w.stop()
                    break

    def stop(self) -> None:
        self._stop.set()


def failed_status() -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "trainer:latest",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": now}},
                }
            ],
        }
    }


def fail_all(api: Any, namespace: str, pods: Iterable[str], workers: int = 16) -> dict[str, float]:
    """Mark pods Failed concurrently; returns each pod's time just before its write."""
    core = client.CoreV1Api(api)
    started: dict[str, float] = {}

    def fail(name: str) -> None:
        started[name] = time.monotonic()
        core.patch_namespaced_pod_status(name, namespace, failed_status())

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fail, pods))
    return started


def fail_paced(api: Any, namespace: str, pods: Iterable[str], per_s: float) -> dict[str, float]:
    """Mark pods Failed one at a time, ``per_s`` a second (failures as they come in steady
    operation, not a burst); returns each pod's time just before its write."""
    core = client.CoreV1Api(api)
    started: dict[str, float] = {}
    due = time.monotonic()
    for name in pods:
        time.sleep(max(0.0, due - time.monotonic()))
        started[name] = time.monotonic()
        core.patch_namespaced_pod_status(name, namespace, failed_status())
        due += 1 / per_s
    return started


_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def request_counts(api: Any) -> Counter[tuple[str, str, str]]:
    """``(resource/subresource, verb, code) -> count`` from the API server's /metrics."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in response.data.decode().splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") == "WATCH":
            continue
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(resource, labels.get("verb", ""), labels.get("code", ""))] += int(
            float(match["value"])
        )
    return counts
