"""The safetensors file format, encoded from and decoded into tensors without copies.

The ``safetensors`` library writes only to a path or to a fresh ``bytes`` object; the SDK
needs the bytes as a stream of buffers it can checksum while writing, place inside a tar
member and upload to an object store, and it decodes from buffers it has already read and
checked. The format is an 8-byte little-endian header length, a JSON header and the raw
tensor bytes, so encoding and decoding here is short; the test suite checks the files against
the ``safetensors`` library in both directions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "C64": torch.complex64,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class TensorFileError(ValueError):
    """A safetensors file is malformed or a tensor cannot be stored in one."""


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous host tensor, without copying them."""
    flat = tensor.detach().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def encode(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[list[memoryview], int]:
    """The file as buffers (header first, then each tensor's own memory) and its total size.

    Tensors must already be contiguous and on the host (the caller stages them). Larger
    element types come first so every tensor starts aligned for zero-copy views on load.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    pieces: list[memoryview] = []
    offset = 0
    for key in order:
        tensor = tensors[key]
        dtype = _NAMES.get(tensor.dtype)
        if dtype is None:
            raise TensorFileError(f"tensor {key!r}: dtype {tensor.dtype} has no safetensors name")
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise TensorFileError(f"tensor {key!r} must be a contiguous host tensor")
        data = tensor_bytes(tensor)
        header[key] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        pieces.append(data)
        offset += data.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = memoryview(struct.pack("<Q", len(raw)) + raw)
    return [head, *pieces], head.nbytes + offset


def decode(buffer: torch.Tensor, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors viewing ``buffer`` (a uint8 tensor holding a whole file) and the metadata."""
    total = buffer.numel()
    if total < 8:
        raise TensorFileError(f"{where}: too short for a safetensors header")
    (length,) = struct.unpack("<Q", buffer[:8].numpy().tobytes())
    if length > total - 8:
        raise TensorFileError(f"{where}: header length {length} exceeds the file")
    try:
        header = json.loads(buffer[8 : 8 + length].numpy().tobytes())
    except ValueError as exc:
        raise TensorFileError(f"{where}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise TensorFileError(f"{where}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data = buffer[8 + length :]
    tensors: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TensorFileError(f"{where}: bad header entry for {key!r}") from exc
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = 1
        for dim in shape:
            numel *= dim
        if not 0 <= begin <= end <= data.numel() or end - begin != numel * itemsize:
            raise TensorFileError(f"{where}: tensor {key!r} has inconsistent offsets")
        chunk = data[begin:end]
        if chunk.storage_offset() % itemsize:
            chunk = chunk.clone()  # written unaligned by another tool
        tensors[key] = chunk.view(dtype).reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}
