"""The SDK's own gloo group: how the ranks of a distributed job agree on checkpoints.

Training may run on NCCL; the SDK never issues collectives there, where they would
interleave with the trainer's and need GPU tensors for bookkeeping. It makes a private gloo
group over the same ranks with a timeout of its own, so a rank that dies makes the others
raise :class:`CollectiveError` (at once when its sockets close, at the latest after the
timeout) instead of hanging. Messages are JSON carried in uint8 tensors: no pickle crosses
ranks, and every message is a plain dict.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0


class CollectiveError(RuntimeError):
    """A peer died or the group timed out during a checkpoint collective."""


def in_process_group() -> bool:
    """Whether ``torch.distributed`` runs more than one rank (so checkpoints are collective)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Collective:
    """A gloo group over every rank of the default process group."""

    def __init__(self, group: Any, dcp_group: Any, rank: int, size: int) -> None:
        self.group = group
        self.dcp_group = dcp_group
        """A second gloo group for DCP's own collectives, which may run in DCP's background
        thread (``async_save``) while the caller's thread uses :attr:`group`."""
        self.rank = rank
        self.size = size

    @classmethod
    def create(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> Collective | None:
        """The group when ``torch.distributed`` runs more than one rank, else None.

        Collective itself: every rank must call it at the same point (the SDK does so from
        the caller's thread, before any asynchronous work starts).
        """
        if not in_process_group():
            return None
        timeout = timedelta(seconds=timeout_s)
        group = dist.new_group(backend="gloo", timeout=timeout)
        dcp_group = dist.new_group(backend="gloo", timeout=timeout)
        return cls(group, dcp_group, dist.get_rank(), dist.get_world_size())

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def _run(self, what: str, op: Any, *args: Any) -> None:
        try:
            op(*args, group=self.group)
        except RuntimeError as exc:
            raise CollectiveError(f"rank {self.rank}: {what} failed (a peer died?): {exc}") from exc

    def all_gather(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's ``message``, indexed by rank."""
        data = _encode(message)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        self._run("gathering sizes", dist.all_gather, sizes, torch.tensor([data.numel()]))
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: data.numel()] = data
        received = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        self._run("gathering messages", dist.all_gather, received, padded)
        return [_decode(r[: int(s.item())]) for r, s in zip(received, sizes, strict=True)]

    def broadcast(self, message: dict[str, Any] | None) -> dict[str, Any]:
        """Rank 0's ``message`` on every rank (the others pass None)."""
        data = _encode(message or {}) if self.is_leader else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([data.numel()])
        self._run("broadcasting a size", dist.broadcast, size, 0)
        if not self.is_leader:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        self._run("broadcasting a message", dist.broadcast, data, 0)
        return _decode(data)


def _encode(message: dict[str, Any]) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(message).encode()), dtype=torch.uint8)


def _decode(data: torch.Tensor) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(data.numpy().tobytes())
    return decoded
