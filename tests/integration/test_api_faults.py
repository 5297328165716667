"""API faults: the kube-apiserver restarted mid-restart and mid-deletion, a 409 storm, the
operator's connections cut and partitioned away. It must recover without duplicate work, and
the invariant checker must find nothing. Times to recover are printed (``-s``).

These run on a control plane of their own (etcd + kube-apiserver), so restarting it disturbs
no other test.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_operator.api import crdgen
from ckpt_operator.testing import apifaults
from ckpt_operator.testing.apifaults import FaultBed
from ckpt_operator.testing.controlplane import ControlPlane, api_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

RECOVERY_BOUND_S = 30.0
"""Generous: on an idle machine recovery takes well under a few seconds."""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    crds = [crdgen.crd(d) for d in crdgen.DEFINITIONS]
    with ControlPlane(workdir=tmp_path_factory.mktemp("faultplane"), crds=crds) as started:
        yield started


@pytest.fixture
def bed(plane: ControlPlane, tmp_path: Path) -> Iterator[FaultBed]:
    with (
        api_client(plane.kubeconfig) as api,
        FaultBed(plane, api, tmp_path, random.Random(7)).running() as running,
    ):
        yield running
        assert "Traceback" not in running.operator.log_text(), running.operator.log_text()[-3000:]


def judge(bed: FaultBed) -> None:
    problems = bed.verdict()
    print(f"relists: {bed.observer.relists}; judged in part: {bed.observer.unjudged}")
    print({fault: [round(s, 2) for s in times] for fault, times in bed.recoveries.items()})
    assert not problems, "\n".join(map(str, problems))
    for fault, times in bed.recoveries.items():
        assert max(times) < RECOVERY_BOUND_S, (fault, times)


def test_apiserver_restarts_mid_restart_and_mid_deletion(bed: FaultBed) -> None:
    """Each fault graceful and as a crash, right after the change the operator must act on
    (it may have acted already) and right before it (its watches are still coming back)."""
    for crash in (False, True):
        how = "crash" if crash else "restart"
        bed.note(f"{how} then failure", apifaults.failure_after_apiserver_restart(bed, crash))
        bed.note(f"failure then {how}", apifaults.apiserver_restart_mid_restart(bed, crash))
        bed.note(f"{how} then deletion", apifaults.deletion_after_apiserver_restart(bed, crash))
        bed.note(f"deletion then {how}", apifaults.apiserver_restart_mid_deletion(bed, crash))
    judge(bed)


def test_a_409_storm_is_survived_without_duplicate_attempts(bed: FaultBed) -> None:
    """The operator's status writes carry a resourceVersion: each bump makes one a 409 it
    must re-read and recompute, never create the next attempt again."""
    rates, conflicts = [], 0
    for _ in range(3):
        pod_s, status_s, rate, refused = apifaults.storm_mid_restart(bed)
        bed.note("409 storm: next pod", pod_s)
        bed.note("409 storm: status", status_s)
        rates.append(rate)
        conflicts += refused
    print(f"storm: {[round(r) for r in rates]} writes/s, {conflicts} status writes refused (409)")
    judge(bed)
    assert conflicts > 0, "the storm caused no conflict"


def test_cut_connections_and_a_partition(bed: FaultBed) -> None:
    for _ in range(3):
        bed.note("connections cut mid-restart", apifaults.connections_cut_mid_restart(bed))
        bed.note("connections cut, then failure", apifaults.failure_after_connections_cut(bed))
    bed.note("partition mid-restart", apifaults.partition_mid_restart(bed))
    judge(bed)
