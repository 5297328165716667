"""A tiny stand-in for scheduler + kubelet, so the demo and end-to-end tests train for real.

It binds unscheduled pods of one namespace to a node of its own, runs the first container's
command as a local process (the image is ignored: ``python`` means this interpreter, and the
working directory is the repository), and reports the pod's phase and exit code through the
status subresource exactly as a kubelet would. Deleting the pod kills the process and removes
the pod, as a kubelet does once its containers have stopped. Processes get ``KUBECONFIG`` in
place of an in-cluster service account, so the SDK can register checkpoints.

It also stands in for cluster DNS and the pod network of a multi-node run: every worker runs on
loopback, so the rendezvous name (``<pod>.<run>.<namespace>.svc``) is given to the processes as
``127.0.0.1``, and each gang gets a free loopback port for it, so runs never collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ckpt_operator.api import names
from ckpt_operator.api.conditions import now_iso
from ckpt_operator.testing.controlplane import api_client, free_port
from ckpt_operator.testing.lifecycle import Started

log = logging.getLogger(__name__)

NODE_NAME = "local-runner"
_FIELD_REFS = {"metadata.name", "metadata.namespace", "spec.nodeName"}


def container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Literal values and downward-API fields; anything else (secrets…) is not supported."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path in _FIELD_REFS:
            section, key = path.split(".")
            env[item["name"]] = str((pod.get(section) or {}).get(key, ""))
    return env


class LoopbackNetwork:
    """Rendezvous addresses of gangs mapped onto loopback, a free port per gang."""

    def __init__(self) -> None:
        self._ports: dict[str, str] = {}

    def rewrite(self, env: dict[str, str]) -> dict[str, str]:
        address = env.get(names.ENV_MASTER_ADDR, "")
        if not address.endswith(".svc"):
            return env
        port = self._ports.setdefault(address, str(free_port()))
        return {
            **env,
            names.ENV_MASTER_ADDR: "127.0.0.1",
            names.ENV_PET_MASTER_ADDR: "127.0.0.1",
            names.ENV_MASTER_PORT: port,
            names.ENV_PET_MASTER_PORT: port,
        }


def local_command(container: dict[str, Any]) -> list[str]:
    command = [*(container.get("command") or []), *(container.get("args") or [])]
    if not command:
        raise ValueError(f"container {container.get('name')!r} has no command to run locally")
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


class LocalRunner(Started):
    """Runs the pods of ``namespace`` as local processes until ``stop()``."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, logdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = workdir
        self.logdir = logdir
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._network = LoopbackNetwork()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        from kubernetes import client

        self.logdir.mkdir(parents=True, exist_ok=True)
        with api_client(self.kubeconfig) as api:
            node = client.V1Node(metadata=client.V1ObjectMeta(name=NODE_NAME))
            with contextlib.suppress(client.ApiException):
                client.CoreV1Api(api).create_node(node)
        watcher = threading.Thread(target=self._watch, name="local-runner", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def stop(self) -> None:
        self._stop.set()
        for process in list(self._processes.values()):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for thread in self._threads:
            thread.join(timeout=10)

    def _watch(self) -> None:
        from kubernetes import client, watch

        with api_client(self.kubeconfig) as api:
            core = client.CoreV1Api(api)
            while not self._stop.is_set():
                stream = watch.Watch()
                try:
                    for event in stream.stream(
                        core.list_namespaced_pod, self.namespace, timeout_seconds=1
                    ):
                        if self._stop.is_set():
                            break
                        self._on_event(
                            core, event["type"], api.sanitize_for_serialization(event["object"])
                        )
                except Exception:  # a dropped watch is retried; the runner must not die
                    log.exception("local runner watch failed; retrying")
                finally:
                    stream.stop()

    def _on_event(self, core: Any, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            process = self._processes.pop(name, None)
            if process is not None:
                process.kill()
                process.wait()
            if kind != "DELETED" and pod["spec"].get("nodeName") == NODE_NAME:
                with contextlib.suppress(Exception):  # gone already
                    core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
            return
        if pod["spec"].get("nodeName") or name in self._processes:
            return
        self._launch(core, pod)

    def _launch(self, core: Any, pod: dict[str, Any]) -> None:
        from kubernetes import client

        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(kind="Node", name=NODE_NAME),
        )
        # _preload_content=False: the client cannot deserialize the Binding's Status reply.
        core.create_namespaced_binding(self.namespace, binding, _preload_content=False)
        log_file: IO[bytes] = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            local_command(container),
            cwd=self.workdir,
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                **self._network.rewrite(container_env(pod, container)),
            },
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        self._processes[name] = process
        started = now_iso()
        self._report(
            core, name, container["name"], "Running", {"running": {"startedAt": started}}, started
        )
        threading.Thread(
            target=self._reap,
            args=(core, name, container["name"], process, log_file, started),
            daemon=True,
        ).start()

    def _reap(
        self,
        core: Any,
        name: str,
        container: str,
        process: subprocess.Popen[bytes],
        log_file: IO[bytes],
        started: str,
    ) -> None:
        code = process.wait()
        log_file.close()
        if self._processes.pop(name, None) is None or self._stop.is_set():
            return  # deleted or shutting down: nobody to report to
        state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now_iso(),
            }
        }
        self._report(core, name, container, "Succeeded" if code == 0 else "Failed", state, started)

    def _report(
        self, core: Any, name: str, container: str, phase: str, state: dict[str, Any], started: str
    ) -> None:
        from kubernetes import client

        status = {
            "phase": phase,
            "startTime": started,
            "containerStatuses": [
                {
                    "name": container,
                    "state": state,
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "image": "local",
                    "imageID": "",
                }
            ],
        }
        with contextlib.suppress(client.ApiException):
            core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
