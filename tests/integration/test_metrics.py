"""The operator's metrics endpoint, scraped while a run fails, restarts and is deleted."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ckpt_operator.testing.cluster import Cluster, run_body
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorProcess) -> Samples:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def operator(namespace: str, start_operator: Any) -> Iterator[OperatorProcess]:
    process: OperatorProcess = start_operator(namespace, allowed_roots=("file:///tmp/",))
    yield process
    assert "Traceback" not in process.log_text(), process.log_text()[-4000:]


def test_a_failing_run_shows_in_the_metrics(
    k8s: Any, namespace: str, tmp_path: Path, operator: OperatorProcess
) -> None:
    kube = Cluster(k8s, namespace)
    store = tmp_path / "store"
    store.mkdir()
    kube.create_run(run_body("r", f"file://{store}"))
    kube.wait_pod("r", 0)
    kube.run_pod("r", 0)
    ckpt = kube.add_checkpoint("r", store, 100, 0)
    kube.wait_checkpoint(ckpt, "Ready")
    wait_for(lambda: (kube.status("r").get("latestCheckpoint") or {}).get("step") == 100, 10, "")
    kube.fail_pod("r", 0, exit_code=137, reason="OOMKilled")
    kube.wait_pod("r", 1)
    ns = namespace

    def once(what: str, ready: Callable[[Samples], bool]) -> Samples:
        """The first scrape that shows ``what``; scrapes twice a second."""

        def shown() -> Samples | None:
            samples = scrape(operator)
            return samples if ready(samples) else None

        return wait_for(shown, 20, what, 0.5)

    samples = once(
        "the restart and the retained bytes",
        lambda s: (
            value(s, "ckpt_operator_restarts_total", reason="OOMKilled") == 1
            and bool(value(s, "ckpt_operator_run_retained_bytes", namespace=ns, run="r"))
        ),
    )
    assert value(samples, "ckpt_operator_run_attempt", namespace=ns, run="r") == 1
    assert value(samples, "ckpt_operator_run_resume_step", namespace=ns, run="r") == 100
    assert value(samples, "ckpt_operator_restart_duration_seconds_count") == 1

    # Checkpoint 100 is attempt 1's resume target and the newest: deleting it waits.
    kube.delete(ckpt)
    blocked = once(
        "the blocked deletion",
        lambda s: value(s, "ckpt_operator_checkpoint_deletions_blocked", reason="newest") == 1,
    )
    assert value(blocked, "ckpt_operator_checkpoint_deletions_blocked", reason="resume_target") == 1

    kube.fail_pod("r", 1, exit_code=1)
    kube.wait_pod("r", 2)
    kube.delete("r", "trainingruns")
    wait_for(lambda: kube.run("r") is None, 30, "the run gone")
    after = scrape(operator)
    assert value(after, "ckpt_operator_restarts_total", reason="Error") == 1
    assert value(after, "ckpt_operator_checkpoint_deletions_blocked", reason="newest") == 0
    for name in ("run_attempt", "run_resume_step", "run_retained_bytes"):
        assert value(after, f"ckpt_operator_{name}", namespace=ns, run="r") is None, name
