"""The trainer side: save and restore full training state, export weights for inference."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import torch

from ckpt_operator.api import names
from ckpt_operator.api.names import Format
from ckpt_operator.sdk.asyncsave import AsyncWriter
from ckpt_operator.sdk.collective import DEFAULT_TIMEOUT_S, Collective, in_process_group
from ckpt_operator.sdk.export import DEFAULT_MAX_SHARD_SIZE, config_dict, stage_hf
from ckpt_operator.sdk.registry import CheckpointRecord, KubeRegistry, Registry
from ckpt_operator.sdk.sharded import Outcome, agree, check_writable, load_part, write_sharded
from ckpt_operator.sdk.state import (
    Staged,
    rng_state,
    set_rng_state,
    stage_full,
)
from ckpt_operator.sdk.writer import write_checkpoint
from ckpt_operator.storage.layout import CheckpointName, parse_committed
from ckpt_operator.storage.store import PathEscapeError, Store, as_store

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stateful(Protocol):
    """Anything with PyTorch's state-dict protocol: modules, optimizers, LR schedulers."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


READ_ATTEMPTS = 3
"""Reads of one candidate before an access error (permission, timeout) makes restore move on."""
RETRY_BACKOFF_S = 1.0
"""The first pause between those reads; it doubles after each."""


class CandidatesUnreadableError(RuntimeError):
    """No candidate loaded, and some could not even be read (access errors, not damage).

    Starting from scratch would silently throw their training away, so restore raises this
    instead; ``errors`` maps each unreadable candidate's URI to its last error.
    """

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        listed = "; ".join(f"{uri}: {reason}" for uri, reason in self.errors.items())
        super().__init__(f"no resume candidate could be read (access errors): {listed}")


def env_candidates(env: Mapping[str, str]) -> list[str] | None:
    """Resume candidates the operator handed over; None when it handed over nothing at all.

    The operator always sets ``CKPT_RESUME_CANDIDATES`` (to ``[]`` when it chose nothing: no
    checkpoint verified, or all are Invalid or being deleted), and then the run starts from
    scratch: an explicit empty list is never widened to a scan of the store, which would resume
    from checkpoints the operator rejected or has not verified. Only when the variable is absent
    (an attached workload whose webhook was bypassed, or no operator at all) does this return
    None, which makes :meth:`CheckpointManager.restore` scan the store.
    """
    if names.ENV_RESUME_CANDIDATES not in env:
        return [env[names.ENV_RESUME_FROM]] if env.get(names.ENV_RESUME_FROM) else None
    raw = env[names.ENV_RESUME_CANDIDATES].strip()
    candidates = json.loads(raw) if raw else []
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise ValueError(f"{names.ENV_RESUME_CANDIDATES} must be a JSON list of URIs")
    if not candidates and env.get(names.ENV_RESUME_FROM):
        return [env[names.ENV_RESUME_FROM]]
    return candidates


class CheckpointManager:
    """Saves and restores a training run's checkpoints in its store.

    Inside a TrainingRun use :meth:`from_env`. Outside Kubernetes construct it directly; with
    no ``resume_candidates`` :meth:`restore` then scans the store for the newest committed full
    checkpoint. ``format`` defaults to ``dir`` on filesystems and ``tar`` on object stores.

    Under an initialized ``torch.distributed`` group (more than one rank) every rank calls
    :meth:`save` and :meth:`restore` alike: each rank saves its own state into one checkpoint
    (:mod:`~ckpt_operator.sdk.sharded`; format ``dir``, tar is refused) and restores its own
    shard of the same checkpoint, which rank 0 registers. ``collective_timeout_s`` bounds how
    long ranks wait for a dead peer. For FSDP/DTensor state use :mod:`~ckpt_operator.sdk.dcp`.
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
        collective_timeout_s: float = DEFAULT_TIMEOUT_S,
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
        self._format_given = format is not None
        self._timeout_s = collective_timeout_s
        self._coll: Collective | None = None
        self._coll_ready = False

    def collective(self) -> Collective | None:
        """The SDK's gloo group across the job's ranks; None for a single process.

        Made on first use, which every rank reaches together (its first save or restore).
        """
        if not self._coll_ready:
            self._coll = Collective.create(self._timeout_s)
            self._coll_ready = True
            if self._coll is not None and not self._format_given:
                self.format = "dir"  # the object-store default, tar, has one writer
        return self._coll

    @property
    def is_leader(self) -> bool:
        """True on the rank that commits and registers checkpoints (rank 0, or no group).

        Never makes the SDK's group itself (that is collective): rank 0 alone may ask, e.g.
        from :meth:`export_weights` called on rank 0 only before any save or restore.
        """
        if self._coll_ready:
            return self._coll is None or self._coll.is_leader
        return not in_process_group() or torch.distributed.get_rank() == 0

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
        Under torch.distributed every rank passes its own state (and gets the same URI).
        """
        if self._format_given and in_process_group():
            # Before the group is made: a rank failing inside it would fail its peers with a
            # broken connection instead of this reason.
            check_writable(self.format, torch.distributed.get_world_size())
        coll = self.collective()
        name = CheckpointName(step, self.attempt, self.format)
        try:
            trees = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                "extra": extra,
            }
            staged = stage_full(step, model=_state_dict(model), trees=trees, copy=not blocking)
        except Exception as exc:
            if coll is not None:  # the other ranks wait for this one: fail them too
                reason = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    self._submit(name, Staged({}), metrics, blocking=True, error=reason)
            raise
        return self._submit(name, staged, metrics, blocking)

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
        ``transformers`` config. Consumers find it with :meth:`Consumer.latest`. Under
        torch.distributed only rank 0 writes it: pass the full model there."""
        name = CheckpointName(step, self.attempt, self.format, "weights")
        if not self.is_leader:
            return self.store.uri(name.path)
        state = _state_dict(model)
        assert state is not None
        staged = stage_hf(
            state,
            config_dict(model, config),
            copy=not blocking,
            max_shard_size=max_shard_size,
            tokenizer_dir=tokenizer_dir,
        )
        return self._submit(name, staged, metrics, blocking)

    def save_dcp(
        self,
        step: int,
        state_dict: dict[str, Any],
        *,
        metrics: Mapping[str, float] | None = None,
        blocking: bool = True,
        **options: Any,
    ) -> Any:
        """Save ``state_dict`` (e.g. from ``torch.distributed.checkpoint.state_dict``) as one
        DCP checkpoint; every rank calls it. Returns the URI, or with ``blocking=False`` the
        future of ``dcp.async_save``. See :mod:`ckpt_operator.sdk.dcpio`."""
        from ckpt_operator.sdk import dcpio

        return dcpio.save(self, step, state_dict, metrics=metrics, blocking=blocking, **options)

    def restore_dcp(self, state_dict: dict[str, Any], *, planner: Any = None) -> int | None:
        """Load the newest DCP checkpoint that verifies into ``state_dict`` in place (any
        world size: DCP reshards) and return its step; None when none does. Raises
        :class:`~ckpt_operator.sdk.dcpio.PartlyLoadedError` when none does but a failed one
        had already overwritten part of ``state_dict``."""
        from ckpt_operator.sdk import dcpio

        return dcpio.restore(self, state_dict, planner=planner)

    def _submit(
        self,
        name: CheckpointName,
        staged: Staged,
        metrics: Mapping[str, float] | None,
        blocking: bool,
        error: str | None = None,
    ) -> str:
        def job() -> None:
            self._write(name, staged, metrics, error)

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
        self,
        name: CheckpointName,
        staged: Staged,
        metrics: Mapping[str, float] | None,
        error: str | None = None,
    ) -> None:
        coll = self._coll if name.kind == "full" else None
        files, run = staged.files, self.run
        if coll is None:
            manifest = write_checkpoint(self.store, name, files, run=run, metrics=metrics)
        else:
            found = write_sharded(
                coll, self.store, name, files, run=run, metrics=metrics, error=error
            )
            if found is None:
                return  # rank 0 committed it and registers it
            manifest = found
        log.info("committed %s (%d bytes)", self.store.uri(name.path), manifest.total_size)
        if self.registry is not None:
            self.registry.register(
                CheckpointRecord(
                    self.run, name, manifest.metrics, manifest.world_size, manifest.shards
                )
            )

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
        """URIs to try, newest first: the operator's list, else a scan of the store.

        Under torch.distributed rank 0's list is used by every rank.
        """
        coll = self.collective()
        if coll is not None and not coll.is_leader:
            message = coll.broadcast(None)
            if "error" in message:  # rank 0 could not list them: fail with it, never wait
                raise RuntimeError(f"no resume candidates: rank 0 failed: {message['error']}")
            return list(message["candidates"])
        try:
            found = self._leader_candidates()
        except Exception as exc:
            if coll is not None:
                with contextlib.suppress(Exception):
                    coll.broadcast({"error": f"{type(exc).__name__}: {exc}"})
            raise
        if coll is not None:
            coll.broadcast({"candidates": found})
        return found

    def _leader_candidates(self) -> list[str]:
        if self.resume_candidates is not None:
            return list(self.resume_candidates)
        names = [n for n in map(parse_committed, self.store.list_entries()) if n is not None]
        names.sort(key=lambda n: (n.step, n.attempt), reverse=True)
        found = []
        for n in names:
            try:
                found.append(self.store.uri(n.path))
            except PathEscapeError as exc:  # e.g. a symlink out of the store: never read
                log.warning("skipping store entry %s: %s", n.path, exc)
        return found

    def restore(
        self,
        *,
        model: Stateful | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        restore_rng: bool = True,
    ) -> int | None:
        """Load the newest candidate that verifies and return its step; None when none does.

        A candidate proven damaged is skipped, and rank 0 asks the operator to verify it
        again. One that cannot be read is retried, then skipped without blame; if nothing
        loads and any was unreadable, :class:`CandidatesUnreadableError` is raised. Under
        torch.distributed each rank checks its own shard and all ranks agree: they load the
        same candidate, or all move on to the next one.
        """
        self.wait()  # a pending save would use the ranks' group concurrently
        unreadable: dict[str, str] = {}
        for uri in self.candidates():
            read = partial(load_part, self.store, uri, self.collective(), verify=self.verify)
            outcome, loaded = self.read_candidate(uri, read)
            if outcome.fatal:
                raise ValueError(f"cannot resume from {uri}: {outcome.reason}")
            if not outcome.ok:
                if outcome.unreadable:
                    unreadable[uri] = outcome.reason
                self.reject(uri, outcome)
                continue
            assert loaded is not None
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
        if unreadable:
            raise CandidatesUnreadableError(unreadable)
        return None

    def read_candidate(self, uri: str, read: Callable[[], tuple[Outcome, T]]) -> tuple[Outcome, T]:
        """``read()`` agreed across the ranks, again with backoff while it is unreadable.

        Every rank reaches the same verdict, so all retry together or none does.
        """
        delay = RETRY_BACKOFF_S
        for attempt in range(1, READ_ATTEMPTS + 1):
            outcome, loaded = read()
            outcome = agree(self.collective(), outcome)
            if outcome.ok or outcome.fatal or not outcome.unreadable or attempt == READ_ATTEMPTS:
                break
            log.warning("cannot read %s (try %d): %s", uri, attempt, outcome.reason)
            time.sleep(delay)
            delay *= 2
        return outcome, loaded

    def reject(self, uri: str, outcome: Outcome) -> None:
        """Log a skipped candidate; for one proven damaged rank 0 requests re-verification.

        The operator alone decides Invalid: the pod only annotates the Checkpoint, so it
        needs no write access to Checkpoint status.
        """
        log.warning("skipping %s: %s", uri, outcome.reason)
        name = parse_committed(uri)
        if outcome.invalid and name is not None and self.registry is not None and self.is_leader:
            self.registry.request_verification(
                name.object_name(self.run), f"failed verification at restore: {outcome.reason}"
            )


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
