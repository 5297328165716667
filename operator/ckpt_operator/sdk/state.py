"""Training state as files: tensors in safetensors, everything else as JSON — never pickle.

A full checkpoint holds ``model.safetensors`` (the model's state dict, loadable by any
safetensors reader), ``state.safetensors`` (every other tensor: optimizer moments, RNG
states, tensors in extras) and ``state.json``: the optimizer, scheduler, RNG and extras trees
with each tensor replaced by a reference into ``state.safetensors``. JSON cannot express
tuples, non-string keys, tensors or numpy arrays, so those are tagged; anything else that is
not plain JSON is refused with its path named rather than pickled.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ckpt_operator.sdk.tensorfile import decode, encode
from ckpt_operator.storage.manifest import Manifest, scan
from ckpt_operator.storage.store import Store

MODEL_FILE = "model.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


class StateError(TypeError):
    """Part of the training state cannot be stored without pickle."""


@dataclass
class Staged:
    """A checkpoint's files as buffers: ``name -> (buffers, size)``, ready for any writer.

    ``keep`` holds the tensors the buffers point into, so they outlive the write.
    """

    files: dict[str, tuple[list[memoryview], int]]
    keep: list[torch.Tensor] = field(default_factory=list)


def to_host(tensor: torch.Tensor, copy: bool) -> torch.Tensor:
    """A contiguous host tensor with the same bytes; a private copy when ``copy`` is set
    (async saves must not see training mutate parameters in place)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        pinned = torch.cuda.is_available()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pinned)
        return host.copy_(tensor, non_blocking=False)
    if copy:
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor.contiguous()


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor], copy: bool) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = to_host(obj, copy)
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise StateError(f"{path}: numpy array of Python objects cannot be saved safely")
        key = str(len(tensors))
        raw = torch.from_numpy(np.ascontiguousarray(obj).reshape(-1).view(np.uint8))
        tensors[key] = raw.clone() if copy else raw
        return {"__ndarray__": {"dtype": obj.dtype.str, "shape": list(obj.shape), "data": key}}
    if isinstance(obj, np.generic):
        return _flatten(obj.item(), path, tensors, copy)
    if isinstance(obj, tuple):
        return {"__tuple__": _flatten(list(obj), path, tensors, copy)}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}[{i}]", tensors, copy) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _flatten(v, f"{path}.{k}", tensors, copy) for k, v in obj.items()}
        return {
            "__items__": [
                [
                    _flatten(k, f"{path}<key>", tensors, copy),
                    _flatten(v, f"{path}[{k!r}]", tensors, copy),
                ]
                for k, v in obj.items()
            ]
        }
    raise StateError(
        f"{path}: {type(obj).__name__} cannot be saved without pickle; "
        "convert it to tensors, numpy arrays or JSON types"
    )


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            raw = tensors[value["data"]].numpy()
            return raw.view(np.dtype(value["dtype"])).reshape(value["shape"]).copy()
        if tag == "__tuple__":
            return tuple(_unflatten(v, tensors) for v in value)
        if tag == "__items__":
            return {_hashable(_unflatten(k, tensors)): _unflatten(v, tensors) for k, v in value}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key


def rng_state() -> dict[str, Any]:
    """Every RNG a training loop commonly draws from, so a resumed run repeats its draws."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    # Loaded tensors view a shared file buffer; the RNG setters need tensors of their own
    # (torch.set_rng_state crashes on a view with a storage offset).
    torch.set_rng_state(state["torch"].clone())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.clone() for s in state["cuda"]])


def stage_full(
    step: int,
    *,
    model: Mapping[str, torch.Tensor] | None,
    trees: Mapping[str, Any],
    copy: bool,
) -> Staged:
    """Files of a full checkpoint. ``trees`` holds optimizer/scheduler/rng/extra states."""
    staged = Staged({})
    if model is not None:
        host = {k: to_host(v, copy) for k, v in model.items()}
        staged.files[MODEL_FILE] = encode(host)
        staged.keep.extend(host.values())
    tensors: dict[str, torch.Tensor] = {}
    doc = {"step": step, **{k: _flatten(v, k, tensors, copy) for k, v in trees.items()}}
    staged.files[TENSORS_FILE] = encode(tensors)
    staged.keep.extend(tensors.values())
    raw = json.dumps(doc).encode()
    staged.files[STATE_FILE] = ([memoryview(raw)], len(raw))
    return staged


def load_tensors(buffer: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
    return decode(buffer, where)[0]


def load_state(buffers: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``state.json`` document with tensors and tagged values restored."""
    tensors = load_tensors(buffers[TENSORS_FILE], TENSORS_FILE)
    doc: dict[str, Any] = _unflatten(json.loads(buffers[STATE_FILE].numpy().tobytes()), tensors)
    return doc


def read_files(
    store: Store, rel_path: str, *, verify: bool, prefix: str = ""
) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """Every file of a committed checkpoint (under ``prefix``: one rank's shard), read once
    into fresh host buffers and checked against the manifest on the way (sizes always,
    checksums when ``verify``). Buffers are keyed by file name without the prefix."""
    buffers: dict[str, torch.Tensor] = {}

    def into(name: str, size: int) -> memoryview:
        buffers[name[len(prefix) :]] = buffer = torch.empty(size, dtype=torch.uint8)
        return buffer.numpy().data

    def mine(name: str) -> bool:
        return name.startswith(prefix)

    manifest, _ = scan(store, rel_path, checksums=verify, into=into, only=mine)
    return manifest, buffers
