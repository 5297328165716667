"""The inference side: find the newest Ready weights, load them, report what was loaded.

The operator will not delete a checkpoint a live consumer has not moved past, so a consumer
reports each step it has loaded through its own pod's ``ckpt.dev/loaded-step`` annotation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import torch

from ckpt_operator.api import names
from ckpt_operator.api.names import ANNOTATION_LOADED_STEP, Format
from ckpt_operator.sdk.export import load_export_tensors
from ckpt_operator.sdk.manager import Stateful
from ckpt_operator.sdk.registry import KubeRegistry, Registry
from ckpt_operator.sdk.safetar import safe_extract
from ckpt_operator.sdk.state import CONFIG_FILE, read_files
from ckpt_operator.storage.layout import parse_committed
from ckpt_operator.storage.manifest import scan
from ckpt_operator.storage.store import Store, as_store

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Stateful)


@dataclass(frozen=True)
class WeightsRef:
    """A weights checkpoint, by its path relative to the store root."""

    step: int
    attempt: int
    path: str
    format: Format


class Consumer:
    """Loads a run's exported weights; ``registry=None`` falls back to scanning the store."""

    def __init__(
        self,
        store: str | Store,
        *,
        run: str,
        pod: str | None = None,
        registry: Registry | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = as_store(store, storage_options)
        self.run = run
        self.pod = pod
        self.registry = registry
        self.config: dict[str, Any] = {}
        """``config.json`` of the weights :meth:`load_weights` loaded last."""
        self.loaded: WeightsRef | None = None
        """The weights :meth:`load_weights` last loaded completely; a failed load keeps the
        previous ones, so :meth:`report_loaded` never claims weights that are not served."""
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Consumer:
        """``CKPT_STORE``, ``CKPT_RUN``; the pod from the downward API (``POD_NAME``, else
        ``HOSTNAME``) in ``POD_NAMESPACE`` (else ``CKPT_NAMESPACE``)."""
        env = os.environ if env is None else env
        missing = [k for k in (names.ENV_STORE, names.ENV_RUN) if not env.get(k)]
        if missing:
            raise ValueError(f"{', '.join(missing)} not set: the consumer cannot find its run")
        namespace = env.get(names.ENV_POD_NAMESPACE) or env.get(names.ENV_NAMESPACE)
        kwargs: dict[str, Any] = {
            "run": env[names.ENV_RUN],
            "pod": env.get(names.ENV_POD_NAME) or env.get("HOSTNAME"),
        }
        if namespace and "registry" not in overrides:
            kwargs["registry"] = KubeRegistry.connect(namespace)
        kwargs.update(overrides)
        return cls(env[names.ENV_STORE], **kwargs)

    def latest(self) -> WeightsRef | None:
        """The Ready weights checkpoint with the greatest step, or None."""
        if self.registry is None:
            return self._scan_latest()
        best: WeightsRef | None = None
        for obj in self.registry.list_checkpoints(self.run):
            spec, status = obj.get("spec", {}), obj.get("status") or {}
            if status.get("phase") != "Ready" or spec.get("kind") != "weights":
                continue
            name = parse_committed(str(spec.get("path", "")))
            if name is None or spec.get("run") != self.run:
                continue
            ref = WeightsRef(name.step, name.attempt, name.path, name.format)
            if best is None or (ref.step, ref.attempt) > (best.step, best.attempt):
                best = ref
        return best

    def _scan_latest(self) -> WeightsRef | None:
        """Without a cluster: the newest committed weights checkpoint whose sizes check out."""
        found = map(parse_committed, self.store.list_entries())
        names = [n for n in found if n is not None and n.kind == "weights"]  # by name: no I/O
        for name in sorted(names, key=lambda n: (n.step, n.attempt), reverse=True):
            try:
                manifest, _ = scan(self.store, name.path, checksums=False)
            except Exception as exc:
                log.debug("skipping %s: %s", name.path, exc)
                continue
            if manifest.kind == "weights":
                return WeightsRef(name.step, name.attempt, name.path, name.format)
        return None

    def _resolve(self, ref: WeightsRef | None) -> WeightsRef:
        ref = ref or self.latest()
        if ref is None:
            raise LookupError(f"run {self.run!r} has no Ready weights checkpoint")
        return ref

    def load_weights(
        self, ref: WeightsRef | None = None, *, model: Stateful | None = None, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """Read (and verify) ``ref``, default :meth:`latest`; load into ``model`` if given.

        Only when all of that succeeded does it become :attr:`loaded` (and :attr:`config`).
        """
        ref = self._resolve(ref)
        tensors, config = self._read(ref, verify)
        if model is not None:
            model.load_state_dict(tensors)
        self.config, self.loaded = config, ref
        return tensors

    def load_model(
        self,
        build: Callable[[dict[str, Any]], M],
        ref: WeightsRef | None = None,
        *,
        verify: bool = True,
    ) -> M:
        """Like :meth:`load_weights`, into a fresh model ``build(config)`` makes from the
        export's ``config.json``; returns it. Only once the model holds the weights do they
        become :attr:`loaded`: a config the model cannot be built from, or weights that do not
        fit it, leave :attr:`loaded` (what :meth:`report_loaded` reports) as it was."""
        ref = self._resolve(ref)
        tensors, config = self._read(ref, verify)
        model = build(config)
        model.load_state_dict(tensors)
        self.config, self.loaded = config, ref
        return model

    def _read(
        self, ref: WeightsRef, verify: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        _, buffers = read_files(self.store, ref.path, verify=verify)
        tensors = load_export_tensors(buffers, ref.path)
        config = buffers.get(CONFIG_FILE)
        parsed = json.loads(config.numpy().tobytes()) if config is not None else {}
        return tensors, parsed

    def fetch(self, dest: str, ref: WeightsRef | None = None) -> WeightsRef:
        """Verify ``ref`` and materialise it as a plain local directory an inference server
        can load (tars are extracted safely).

        The files go to a fresh temporary directory beside ``dest``, which then replaces
        ``dest`` as a whole: nothing of an earlier fetch (a ``model.safetensors`` beside new
        shards) survives, and a failed fetch leaves ``dest`` as it was. When ``dest`` is a
        mount point (a volume mounted there), which cannot be renamed, the files are staged
        inside it and replace its contents instead, entry by entry (not in one step).
        """
        ref = self._resolve(ref)
        manifest, _ = scan(self.store, ref.path, checksums=True)
        dest = os.path.abspath(dest)
        parent, base = os.path.split(dest)
        mounted = os.path.ismount(dest)
        os.makedirs(parent, exist_ok=True)
        where = dest if mounted else parent
        staging = os.path.join(where, f".{base}.fetch-{uuid.uuid4().hex[:12]}")
        os.mkdir(staging)  # not mkdtemp: its mode 0700 would hide it from a server's user
        try:
            if ref.format == "tar":
                with self.store.open(ref.path) as f:
                    safe_extract(f, staging)
            else:
                for entry in manifest.files:
                    target = os.path.join(staging, entry.path)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with (
                        self.store.open(f"{ref.path}/{entry.path}") as src,
                        open(target, "wb") as out,
                    ):
                        shutil.copyfileobj(src, out, 16 << 20)
            if mounted:
                _replace_contents(staging, dest)
            else:
                _replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ref

    def report_loaded(self, step: int | None = None) -> bool:
        """Annotate this pod with the step it serves; False (logged once) when it cannot.

        ``step`` defaults to that of :attr:`loaded`: the weights a successful
        :meth:`load_weights` loaded, not :meth:`latest`, which may have moved on meanwhile.
        With nothing loaded there is nothing to report (False). After :meth:`fetch`, pass the
        step once the server has loaded what was fetched.

        Call it again while serving the same step (well within the run's
        ``reportTimeoutSeconds``): each call also refreshes the pod's heartbeat, and only a
        consumer whose reports and heartbeats stop counts as silent and stops protecting what
        it serves.
        """
        if step is None:
            if self.loaded is None:
                log.warning("nothing loaded yet: no step to report")
                return False
            step = self.loaded.step
        if self.registry is None or not self.pod:
            if not self._warned:
                self._warned = True
                log.warning("cannot report the loaded step: no Kubernetes access or pod name")
            return False
        beat = datetime.now(UTC).isoformat(timespec="microseconds")
        annotations = {ANNOTATION_LOADED_STEP: str(step), names.ANNOTATION_HEARTBEAT: beat}
        return self.registry.annotate_pod(self.pod, annotations)


def _replace_dir(new: str, dest: str) -> None:
    """Put directory ``new`` at ``dest``, replacing what is there (renames in one directory).

    POSIX has no atomic exchange of two directories: the old one is first renamed aside, so
    for an instant ``dest`` is absent (never partly written); it is restored if the second
    rename fails, and removed after.
    """
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(dest))
    aside = os.path.join(old, "dir")
    os.rename(dest, aside)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    finally:
        if os.path.isdir(aside) and not os.path.islink(aside):
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.lexists(aside):
                os.unlink(aside)
            os.rmdir(old)


def _replace_contents(staging: str, dest: str) -> None:
    """Make mount point ``dest`` hold exactly what its subdirectory ``staging`` holds."""
    keep = os.path.basename(staging)
    for entry in os.listdir(dest):
        if entry != keep:
            path = os.path.join(dest, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for entry in os.listdir(staging):
        os.rename(os.path.join(staging, entry), os.path.join(dest, entry))
    os.rmdir(staging)
