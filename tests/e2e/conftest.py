"""The e2e tier: the chart, the operator image and trainer pods on a real node.

kind cannot run here (its node container must be ``--privileged``, which runc cannot grant on
machines whose capability bounding set lacks ``CAP_SYS_RESOURCE``), so the tier runs a real
single-node cluster instead (:mod:`ckpt_operator.testing.node`): the local control plane plus
kube-scheduler, kubelet, kube-proxy, Debian's containerd and runc. Images are built offline
(:mod:`ckpt_operator.testing.images`) with a Docker engine started for the purpose
(:mod:`ckpt_operator.testing.docker`). The tier skips, saying why, where none of it can run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.docker import DockerUnavailable
from ckpt_operator.testing.images import Images, image_tags, provide_images
from ckpt_operator.testing.node import KubeletCluster, NodeUnavailable, node_problem

log = logging.getLogger(__name__)

# Where trainers and the operator see the checkpoint store (examples/trainingrun.yaml's root).
STORE_MOUNT = "/tmp/ckpt-operator-demo"
# Trainers and the operator share this uid, so the operator may delete what trainers wrote.
UID = 10001


@dataclass
class E2E:
    cluster: KubeletCluster
    images: Images
    helm: Path
    helm_env: dict[str, str]
    store: Path  # the node's directory behind STORE_MOUNT

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig


def _skip_reason() -> str | None:
    problem = node_problem()
    if problem:
        return problem
    try:
        image_tags()
    except (OSError, RuntimeError) as error:
        return f"cannot make the images here: {error}"
    return None


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """A started node with the images imported and helm built; everything stopped after the
    module, so the node does not idle on through the other tiers."""
    reason = _skip_reason()
    if reason:
        pytest.skip(f"e2e tier needs a real node: {reason}")
    work = tmp_path_factory.mktemp("e2e")
    tags = image_tags()
    cluster = KubeletCluster(workdir=work / "cluster", sandbox_image=tags.pause)
    try:
        cluster.start()
    except NodeUnavailable as error:
        pytest.skip(f"e2e tier needs a real node: {error}")
    try:
        try:
            images = provide_images(cluster)
        except DockerUnavailable as error:
            pytest.skip(f"e2e tier needs a Docker engine to build its images: {error}")
        helm = ensure_binaries(["helm"])["helm"]
        store = work / "store"
        store.mkdir()
        os.chown(store, UID, UID)
        helm_env = {
            "HELM_CACHE_HOME": str(work / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(work / "helm" / "config"),
            "HELM_DATA_HOME": str(work / "helm" / "data"),
        }
        yield E2E(cluster, images, helm, helm_env, store)
    finally:
        cluster.stop()
