"""``make demo``: the whole story on a local control plane, no Docker, then everything stops.

Starts etcd + kube-apiserver + the garbage collector, installs the CRDs, runs the operator as a
process and a local runner that executes trainer pods as processes, and applies
``examples/trainingrun.yaml`` with its trainer told to die in attempts 0 and 1:

* attempt 0 saves steps 50 and 100, then crashes at step 120;
* attempt 1 resumes from step 100 and crashes again at 120, before saving anything;
* attempt 2 resumes from step 100, the newest checkpoint of *any* attempt, and finishes;
* a consumer (an inference server) that loaded step 100 and lags holds the checkpoints
  retention expired after it (step 150) until it reports the final step; retention frees
  the others (step 50) at once.

A timeline is printed as it happens, then ``kubectl get tr,ckpt``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ckpt_operator.api import crdgen, names
from ckpt_operator.testing.binaries import ensure_binaries
from ckpt_operator.testing.controlplane import ControlPlane, api_client
from ckpt_operator.testing.operator_process import OperatorProcess
from ckpt_operator.testing.runner import LocalRunner

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "trainingrun.yaml"
DEMO_ROOT = Path("/tmp/ckpt-operator-demo")
NAMESPACE = "default"
RUN = "mlp-demo"
CONSUMER = "inference-server"
LAGGING_STEP = 100
"""The step the consumer loads and stays at until the run has finished."""
FINISHED = ("Succeeded", "Failed")

console = Console()


@dataclass
class Story:
    """What the demo saw: the facts its test checks."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    held_by_consumer: set[int] = field(default_factory=set)
    """Steps whose deletion the consumer blocked."""
    deleted: list[int] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)
    seconds: float = 0.0


class Timeline:
    """Prints what changed since the last look, with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seen: set[tuple[Any, ...]] = set()

    def once(self, key: tuple[Any, ...], text: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            console.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/dim]  {text}")


def _resumed(attempt: dict[str, Any]) -> str:
    ref = attempt.get("resumedFrom")
    if not ref:
        return "from scratch"
    return f"from step {ref['step']} (written by attempt {ref['attempt']})"


def _observe(
    story: Story, timeline: Timeline, run: dict[str, Any] | None, ckpts: list[dict[str, Any]]
) -> None:
    """Turn the run's status and the checkpoints into timeline lines and story facts."""
    for attempt in ((run or {}).get("status") or {}).get("attempts") or []:
        n, phase = attempt["attempt"], attempt.get("phase")
        timeline.once(("attempt", n), f"attempt {n} [bold]started[/bold], {_resumed(attempt)}")
        if phase == "Failed":
            why = attempt.get("reason") or "failed"
            text = f"attempt {n} [red]failed[/red]: {why}, exit code {attempt.get('exitCode')}"
            timeline.once(("failed", n), text)
        elif phase == "Succeeded":
            timeline.once(("done", n), f"attempt {n} [green]succeeded[/green]")
    live = set()
    for ckpt in ckpts:
        spec, status = ckpt["spec"], ckpt.get("status") or {}
        step, phase = spec["step"], status.get("phase")
        live.add(step)
        where = f"checkpoint step {step} (attempt {spec['attempt']})"
        if phase == "Ready":
            timeline.once(("ready", step), f"{where} [green]verified[/green]")
        elif phase == "Invalid":
            timeline.once(("invalid", step), f"{where} [red]invalid[/red]")
        if ckpt["metadata"].get("deletionTimestamp"):
            timeline.once(("expired", step), f"{where} marked for deletion by retention")
        blockers = (status.get("blockedBy") or []) if phase == "Deleting" else []
        for blocker in blockers:
            if blocker.startswith("consumer "):
                story.held_by_consumer.add(step)
            timeline.once(("held", step, blocker), f"{where} [yellow]held[/yellow]: {blocker}")
    for step in sorted(story.remaining):
        if step not in live and step not in story.deleted:
            story.deleted.append(step)
            timeline.once(("deleted", step), f"checkpoint step {step} [cyan]storage freed[/cyan]")
    story.remaining = sorted(live)


def _consumer_pod() -> Any:
    """An inference server of the run, bound to a node nothing runs: it stays Pending (live),
    and reports its loaded step on itself as a real one would."""
    from kubernetes import client

    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=CONSUMER, labels={names.LABEL_CONSUMER_OF: RUN}),
        spec=client.V1PodSpec(
            node_name="serving-node",
            containers=[client.V1Container(name="server", image="inference-server")],
        ),
    )


def _run_manifest() -> str:
    """The example, with its trainer told to crash in attempts 0 and 1."""
    run = yaml.safe_load(EXAMPLE.read_text())
    container = run["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "FAIL_ON_ATTEMPT", "value": "0,1"})
    return yaml.safe_dump(run)


def scenario(kubeconfig: Path, timeout: float, log: Callable[[], str]) -> Story | None:
    """Drive the story against a running operator and runner; None when it times out."""
    from kubernetes import client

    story, timeline = Story(), Timeline()
    with api_client(kubeconfig) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespaced_pod(NAMESPACE, _consumer_pod())
        timeline.once(("consumer",), f"consumer pod {CONSUMER} started; it has loaded nothing")
        custom.create_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            NAMESPACE,
            names.TRAINING_RUNS,
            yaml.safe_load(_run_manifest()),
        )
        timeline.once(("run",), f"TrainingRun {RUN} created")
        reported: int | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run: Any = custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, NAMESPACE, names.TRAINING_RUNS, RUN
            )
            listed: Any = custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, NAMESPACE, names.CHECKPOINTS
            )
            ckpts: list[dict[str, Any]] = listed["items"]
            _observe(story, timeline, run, ckpts)
            status = run.get("status") or {}
            ready = [
                c["spec"]["step"] for c in ckpts if (c.get("status") or {}).get("phase") == "Ready"
            ]
            finished = status.get("phase") in FINISHED
            settled = all((c.get("status") or {}).get("phase") != "Pending" for c in ckpts)
            if reported is None and LAGGING_STEP in ready:
                reported = _report(core, timeline, LAGGING_STEP)
            elif finished and settled and reported == LAGGING_STEP and story.held_by_consumer:
                reported = _report(core, timeline, max(ready))
            elif (
                finished
                and settled
                and reported != LAGGING_STEP
                and not any(c["metadata"].get("deletionTimestamp") for c in ckpts)
            ):
                story.attempts = status.get("attempts") or []
                story.seconds = time.monotonic() - timeline.started
                return story
            time.sleep(0.5)
    console.print("[red]the story did not finish in time[/red]")
    console.print(log()[-4000:])
    return None


def _report(core: Any, timeline: Timeline, step: int) -> int:
    patch = {"metadata": {"annotations": {names.ANNOTATION_LOADED_STEP: str(step)}}}
    core.patch_namespaced_pod(CONSUMER, NAMESPACE, patch)
    timeline.once(("report", step), f"consumer {CONSUMER} reports it has loaded step {step}")
    return step


def main(timeout: float = 170.0) -> int:
    return 0 if run_demo(timeout) is not None else 1


def run_demo(timeout: float = 170.0) -> Story | None:
    """The demo end to end: the story it told, or None when it did not finish in time."""
    kubectl = str(ensure_binaries(["kubectl"])["kubectl"])
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    try:
        return _demo(kubectl, timeout)
    finally:
        shutil.rmtree(DEMO_ROOT, ignore_errors=True)  # the demo's checkpoints go with it


def _demo(kubectl: str, timeout: float) -> Story | None:
    with tempfile.TemporaryDirectory(prefix="ckpt-demo-") as tmp:
        console.rule("etcd + kube-apiserver + controller-manager on loopback")
        with ControlPlane(
            workdir=Path(tmp) / "cluster",
            controller_manager=True,
            crds=[crdgen.crd(d) for d in crdgen.DEFINITIONS],
        ) as plane:
            console.print(f"API server {plane.server}; CRDs installed")
            operator = OperatorProcess(
                plane.kubeconfig,
                Path(tmp) / "operator.log",
                namespaces=[NAMESPACE],
                allowed_roots=[f"file://{DEMO_ROOT}/"],
            )
            runner = LocalRunner(plane.kubeconfig, NAMESPACE, REPO, Path(tmp) / "pods")
            with operator, runner:
                console.rule(f"{RUN}: crash, crash before saving, resume; a lagging consumer")
                story = scenario(plane.kubeconfig, timeout, operator.log_text)
                if story is not None:
                    console.rule("kubectl get tr,ckpt")
                    cmd = [kubectl, f"--kubeconfig={plane.kubeconfig}", f"--namespace={NAMESPACE}"]
                    subprocess.run([*cmd, "get", "tr,ckpt"], check=True)
                    console.print(f"the story took {story.seconds:.0f} s")
        console.rule("stopped the runner, the operator and the control plane")
    return story
