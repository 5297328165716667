"""The trainer side: save and restore full training state, export weights for inference."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from ckpt_operator.api import names
from ckpt_operator.api.names import Format
from ckpt_operator.sdk.asyncsave import AsyncWriter
from ckpt_operator.sdk.export import DEFAULT_MAX_SHARD_SIZE, config_dict, stage_hf
from ckpt_operator.sdk.registry import CheckpointRecord, KubeRegistry, Registry
from ckpt_operator.sdk.state import (
    MODEL_FILE,
    Staged,
    StateError,
    load_state,
    load_tensors,
    read_files,
    rng_state,
    set_rng_state,
    stage_full,
)
from ckpt_operator.sdk.tensorfile import TensorFileError
from ckpt_operator.sdk.writer import write_checkpoint
from ckpt_operator.storage.layout import CheckpointName, parse_committed
from ckpt_operator.storage.manifest import VerifyError
from ckpt_operator.storage.store import Store, StoreError, as_store

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """Anything with PyTorch's state-dict protocol: modules, optimizers, LR schedulers."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


def env_candidates(env: Mapping[str, str]) -> list[str] | None:
    """Resume candidates the operator handed over; None when no operator chose any."""
    raw = env.get(names.ENV_RESUME_CANDIDATES, "").strip()
    if raw:
        candidates = json.loads(raw)
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise ValueError(f"{names.ENV_RESUME_CANDIDATES} must be a JSON list of URIs")
        return candidates
    if env.get(names.ENV_RESUME_FROM):
        return [env[names.ENV_RESUME_FROM]]
    return [] if env.get(names.ENV_RUN) else None


class CheckpointManager:
    """Saves and restores a training run's checkpoints in its store.

    Inside a TrainingRun use :meth:`from_env`. Outside Kubernetes construct it directly; with
    no ``resume_candidates`` :meth:`restore` then scans the store for the newest committed full
    checkpoint. ``format`` defaults to ``dir`` on filesystems and ``tar`` on object stores.
    """

    def __init__(
        self,
        store: str | Store,
        *,
        run: str = "local",
        attempt: int = 0,
        resume_candidates: Sequence[str] | None = None,
        format: Format | None = None,
        registry: Registry | None = None,
        verify: bool = True,
        max_pending: int = 1,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = as_store(store, storage_options)
        self.run = run
        self.attempt = attempt
        self.format: Format = format or ("dir" if self.store.is_local else "tar")
        self.resume_candidates = None if resume_candidates is None else list(resume_candidates)
        self.registry = registry
        self.verify = verify
        self.extra: Any = None
        """The ``extra`` saved with the checkpoint :meth:`restore` loaded."""
        self._max_pending = max_pending
        self._writer: AsyncWriter | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> CheckpointManager:
        """Configure from the operator's environment contract (``CKPT_STORE``, …)."""
        env = os.environ if env is None else env
        if not env.get(names.ENV_STORE):
            raise ValueError(f"{names.ENV_STORE} is not set: no checkpoint store to use")
        kwargs: dict[str, Any] = {
            "run": env.get(names.ENV_RUN) or "local",
            "attempt": int(env.get(names.ENV_ATTEMPT) or 0),
            "resume_candidates": env_candidates(env),
        }
        namespace = env.get(names.ENV_NAMESPACE)
        if env.get(names.ENV_RUN) and namespace and "registry" not in overrides:
            kwargs["registry"] = KubeRegistry.connect(namespace)
        kwargs.update(overrides)
        return cls(env[names.ENV_STORE], **kwargs)

    # -- saving ---------------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        model: Stateful | Mapping[str, torch.Tensor] | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        extra: Any = None,
        metrics: Mapping[str, float] | None = None,
        blocking: bool = True,
    ) -> str:
        """Commit the full training state at ``step``; returns the checkpoint's URI.

        With ``blocking=False`` the state is first copied to host memory, then written by a
        background thread while training goes on; :meth:`wait` blocks until it is committed.
        """
        trees = {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra,
        }
        staged = stage_full(step, model=_state_dict(model), trees=trees, copy=not blocking)
        return self._submit(
            CheckpointName(step, self.attempt, self.format), staged, metrics, blocking
        )

    def export_weights(
        self,
        model: Stateful | Mapping[str, torch.Tensor],
        step: int,
        *,
        config: Any = None,
        metrics: Mapping[str, float] | None = None,
        blocking: bool = True,
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
        tokenizer_dir: str | os.PathLike[str] | None = None,
    ) -> str:
        """Commit a weights-only checkpoint in the Hugging Face layout (see
        :mod:`ckpt_operator.sdk.export`) for inference servers; ``config`` is a mapping or a
        ``transformers`` config. Consumers find it with :meth:`Consumer.latest`."""
        state = _state_dict(model)
        assert state is not None
        staged = stage_hf(
            state,
            config_dict(model, config),
            copy=not blocking,
            max_shard_size=max_shard_size,
            tokenizer_dir=tokenizer_dir,
        )
        return self._submit(
            CheckpointName(step, self.attempt, self.format, "weights"), staged, metrics, blocking
        )

    def _submit(
        self,
        name: CheckpointName,
        staged: Staged,
        metrics: Mapping[str, float] | None,
        blocking: bool,
    ) -> str:
        def job() -> None:
            self._write(name, staged, metrics)

        if blocking and self._writer is None:
            job()
        else:
            if self._writer is None:
                self._writer = AsyncWriter(self._max_pending)
            self._writer.submit(job)
            if blocking:
                self._writer.wait()
        return self.store.uri(name.path)

    def _write(
        self, name: CheckpointName, staged: Staged, metrics: Mapping[str, float] | None
    ) -> None:
        manifest = write_checkpoint(self.store, name, staged.files, run=self.run, metrics=metrics)
        log.info("committed %s (%d bytes)", self.store.uri(name.path), manifest.total_size)
        if self.registry is not None:
            self.registry.register(CheckpointRecord(self.run, name, manifest.metrics))

    def wait(self) -> None:
        """Block until every asynchronous save is committed; re-raise a failed one."""
        if self._writer is not None:
            self._writer.wait()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- restoring ------------------------------------------------------------------------

    def candidates(self) -> list[str]:
        """URIs to try, newest first: the operator's list, else a scan of the store."""
        if self.resume_candidates is not None:
            return list(self.resume_candidates)
        names = [n for n in map(parse_committed, self.store.list_entries()) if n is not None]
        names.sort(key=lambda n: (n.step, n.attempt), reverse=True)
        return [self.store.uri(n.path) for n in names]

    def restore(
        self,
        *,
        model: Stateful | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        restore_rng: bool = True,
    ) -> int | None:
        """Load the newest candidate that verifies and return its step; None when none does.

        Candidates that fail verification are skipped, and marked Invalid when the pod may.
        """
        for uri in self.candidates():
            loaded = self._load_candidate(uri)
            if loaded is None:
                continue
            step, model_state, doc = loaded
            if model is not None:
                model.load_state_dict(_require(model_state, "model", uri))
            if optimizer is not None:
                optimizer.load_state_dict(_require(doc.get("optimizer"), "optimizer", uri))
            if scheduler is not None:
                scheduler.load_state_dict(_require(doc.get("scheduler"), "scheduler", uri))
            if restore_rng:
                set_rng_state(doc["rng"])
            self.extra = doc.get("extra")
            log.info("restored step %d from %s", step, uri)
            return step
        return None

    def _load_candidate(
        self, uri: str
    ) -> tuple[int, dict[str, torch.Tensor] | None, dict[str, Any]] | None:
        try:
            rel = self.store.rel_from_uri(uri)
        except StoreError as exc:
            log.error("skipping resume candidate: %s", exc)
            return None
        name = parse_committed(rel)
        if name is None:
            log.error("skipping resume candidate %s: not a committed checkpoint name", uri)
            return None
        try:
            manifest, buffers = read_files(self.store, rel, verify=self.verify)
            if manifest.kind != "full":
                log.warning(
                    "skipping %s: a %s checkpoint holds no training state", uri, manifest.kind
                )
                return None
            doc = load_state(buffers)
            model_file = buffers.get(MODEL_FILE)
            model_state = None if model_file is None else load_tensors(model_file, MODEL_FILE)
        except (VerifyError, TensorFileError, StateError, ValueError, KeyError) as exc:
            reason = f"failed verification at restore: {exc}"
            log.warning("skipping %s: %s", uri, reason)
            if self.registry is not None:
                self.registry.mark_invalid(name.object_name(self.run), reason)
            return None
        return int(doc["step"]), model_state, doc


def _state_dict(
    obj: Stateful | Mapping[str, torch.Tensor] | None,
) -> Mapping[str, torch.Tensor] | None:
    if obj is None or isinstance(obj, Mapping):
        return obj
    state: Mapping[str, torch.Tensor] = obj.state_dict()
    return state


def _require(value: Any, what: str, uri: str) -> Any:
    if value is None:
        raise ValueError(f"{uri} holds no {what} state to restore")
    return value
