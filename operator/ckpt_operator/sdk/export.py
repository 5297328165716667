"""Weights exports in the Hugging Face layout, so inference servers load them as they are.

An export directory holds ``config.json``, the weights as ``model.safetensors`` or, above
``max_shard_size``, as ``model-0000i-of-0000N.safetensors`` shards plus
``model.safetensors.index.json``, and the tokenizer and generation files passed through from a
directory. ``transformers.AutoModel*.from_pretrained(dir)``, vLLM and TGI read that layout;
the files are staged here and committed like any checkpoint (atomic, checksummed).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any

import torch

from ckpt_operator.sdk.state import CONFIG_FILE, MODEL_FILE, Staged, to_host
from ckpt_operator.sdk.tensorfile import decode, encode

INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 << 30
"""Hugging Face's default: servers map shards one at a time, so this bounds their peak."""
METADATA = {"format": "pt"}
"""What ``transformers`` expects in every shard's header."""
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "generation_config.json",
        "preprocessor_config.json",
    }
)
"""Files taken from ``tokenizer_dir``: data only. Anything else there (code a loader might
import with ``trust_remote_code``, pickled weights) is left behind."""


class ExportError(ValueError):
    """The export cannot be written in a layout inference servers load safely."""


def shard_name(index: int, count: int) -> str:
    """``model-00001-of-00003.safetensors``: Hugging Face's shard names (1-based)."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def config_dict(model: Any, config: Any) -> dict[str, Any]:
    """``config`` as JSON-able dict: a mapping as given, or a ``transformers`` config's
    ``to_dict()``; without one, the config of a ``transformers`` model itself. Fills in
    ``architectures`` from the model's class, which servers need to pick the implementation."""
    if config is None:
        config = getattr(model, "config", None)
    if config is None:
        doc: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        doc = dict(config)
    elif callable(getattr(config, "to_dict", None)):
        doc = dict(config.to_dict())
    else:
        raise ExportError(f"config must be a mapping or have to_dict(), not {type(config)}")
    if getattr(model, "config", None) is not None and not doc.get("architectures"):
        doc["architectures"] = [type(model).__name__]
    return doc


def dedupe_tied(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the names that alias an earlier one (tied weights).

    safetensors files hold each tensor's bytes once; like ``transformers`` the export keeps
    the first name of a tied group in state-dict order (the input embedding comes before
    ``lm_head``) and ``from_pretrained`` ties the rest again from the config. Tensors that
    merely overlap (slices of one buffer) are kept: each is written as its own bytes.
    """
    seen: set[tuple[str, int, int, torch.dtype, tuple[int, ...], tuple[int, ...]]] = set()
    kept: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.numel():
            key = (
                str(tensor.device),
                tensor.untyped_storage().data_ptr(),
                int(tensor.storage_offset()),
                tensor.dtype,
                tuple(tensor.shape),
                tuple(tensor.stride()),
            )
            if key in seen:
                continue
            seen.add(key)
        kept[name] = tensor
    return kept


def plan_shards(sizes: Mapping[str, int], max_shard_size: int) -> list[list[str]]:
    """Names grouped into shards in order, each at most ``max_shard_size`` bytes of tensor
    data unless a single tensor is larger (it then gets a shard of its own)."""
    if max_shard_size <= 0:
        raise ExportError(f"max_shard_size must be positive, not {max_shard_size}")
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def read_tokenizer_files(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """The allowlisted files present in ``directory``; refuses symlinks and anything that is
    not a regular file, so an export never copies what a name merely points at."""
    files: dict[str, bytes] = {}
    for name in sorted(TOKENIZER_FILES):
        path = os.path.join(directory, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
            raise ExportError(f"{path} is {kind}; tokenizer files must be regular files")
        # O_NOFOLLOW and the second check close the race with a swap after lstat.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ExportError(f"{path} is not a regular file")
            files[name] = f.read()
    return files


def stage_hf(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    copy: bool,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Staged:
    """The files of a weights export in the Hugging Face layout, ready for the writer."""
    extra = {} if tokenizer_dir is None else read_tokenizer_files(tokenizer_dir)
    host = {k: to_host(v, copy) for k, v in dedupe_tied(state).items()}
    sizes = {k: v.numel() * v.element_size() for k, v in host.items()}
    shards = plan_shards(sizes, max_shard_size)
    staged = Staged({}, list(host.values()))
    if len(shards) == 1:
        staged.files[MODEL_FILE] = encode(host, METADATA)
    else:
        weight_map: dict[str, str] = {}
        for i, names in enumerate(shards, 1):
            fname = shard_name(i, len(shards))
            staged.files[fname] = encode({k: host[k] for k in names}, METADATA)
            weight_map.update(dict.fromkeys(names, fname))
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        staged.files[INDEX_FILE] = _json(index)
    staged.files[CONFIG_FILE] = _json(config)
    for name, raw in extra.items():
        staged.files[name] = ([memoryview(raw)], len(raw))
    return staged


def load_export_tensors(buffers: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Every tensor of an export read into ``buffers``: one file, or the shards its index
    names (only files of this checkpoint, only safetensors)."""
    if MODEL_FILE in buffers:
        return decode(buffers[MODEL_FILE], f"{where}/{MODEL_FILE}")[0]
    if INDEX_FILE not in buffers:
        raise ExportError(f"{where} holds neither {MODEL_FILE} nor {INDEX_FILE}")
    index = json.loads(buffers[INDEX_FILE].numpy().tobytes())
    tensors: dict[str, torch.Tensor] = {}
    for fname in sorted(set(index["weight_map"].values())):
        if fname not in buffers or not fname.endswith(".safetensors"):
            raise ExportError(f"{where}/{INDEX_FILE} names {fname!r}, not a shard of it")
        tensors.update(decode(buffers[fname], f"{where}/{fname}")[0])
    return tensors


def _json(doc: Mapping[str, Any]) -> tuple[list[memoryview], int]:
    raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    return [memoryview(raw)], len(raw)
