"""The chart's optional monitoring: ServiceMonitor, PrometheusRule, Grafana dashboard.

The alerts and the dashboard name metrics by string; :func:`test_every_metric_they_use_exists`
fails when one is renamed or removed in ``ckpt_operator.metrics`` without them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from ckpt_operator import metrics
from tests.integration.test_chart import CHART, ROOTS, Helm, Manifest, kinds, only, render

pytestmark = pytest.mark.integration

MONITORING = {
    "allowedRoots": ROOTS,
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "restartsPerHour": 4},
        "dashboard": {"enabled": True, "namespace": "grafana"},
    },
}
ALERTS = {
    "CkptOperatorDown",
    "CkptRunRestartingRepeatedly",
    "CkptRestartBudgetExhausted",
    "CkptDeletionsBlocked",
    "CkptVerificationFailures",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def exported() -> set[str]:
    """Every sample name the operator's metrics module can export."""
    names = set()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def used(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bckpt_operator_\w+", expr)}


@pytest.fixture(scope="module")
def manifest(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return render(helm, tmp_path_factory.mktemp("monitoring"), "ckpt", "ckpt-system", MONITORING)


def dashboard(manifest: Manifest) -> dict[str, Any]:
    config_map = only(manifest, "ConfigMap")
    parsed: dict[str, Any] = json.loads(config_map["data"]["ckpt-operator.json"])
    return parsed


def test_off_by_default(helm: Helm, tmp_path: Path) -> None:
    found = kinds(render(helm, tmp_path, "ckpt", "ckpt-system", {"allowedRoots": ROOTS}))
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(found)


def test_lints_with_everything_on(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(MONITORING))
    proc = helm("lint", str(CHART), "--strict", "--values", str(values))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_rendered_objects(manifest: Manifest) -> None:
    monitor = only(manifest, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    service = only(manifest, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )

    rule = only(manifest, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == ALERTS
    assert all(
        r["expr"] and r["labels"]["severity"] and r["annotations"]["summary"]
        for r in alerts.values()
    )
    assert alerts["CkptRunRestartingRepeatedly"]["expr"].endswith(">= 4")
    assert 'job="ckpt-ckpt-operator-metrics"' in alerts["CkptOperatorDown"]["expr"]
    assert "{{ $labels.run }}" in alerts["CkptRunRestartingRepeatedly"]["annotations"]["summary"]

    config_map = only(manifest, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard(manifest)
    assert board["uid"] == "ckpt-operator"
    assert all(p["targets"] for p in board["panels"])


def test_every_metric_they_use_exists(manifest: Manifest) -> None:
    rule = only(manifest, "PrometheusRule")
    alert_exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    board = dashboard(manifest)
    board_exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    board_exprs += [v.get("query", "") for v in board["templating"]["list"]]
    names = exported()
    assert used(alert_exprs) - names == set()
    assert used(board_exprs) - names == set()
    # The new run metrics are all on the dashboard, and each alert reads one of ours or `up`.
    assert {
        "ckpt_operator_restarts_total",
        "ckpt_operator_restart_duration_seconds_bucket",
        "ckpt_operator_run_resume_step",
        "ckpt_operator_run_retained_bytes",
        "ckpt_operator_checkpoint_deletions_blocked",
    } <= used(board_exprs)
    assert all(used([e]) or e.startswith("absent(up{") for e in alert_exprs)
