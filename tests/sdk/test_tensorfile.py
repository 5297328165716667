"""Our safetensors encoder/decoder agrees with the safetensors library both ways."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ckpt_operator.sdk.tensorfile import TensorFileError, decode, encode

TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2).half(),
    "i64": torch.arange(5),
    "u8": torch.arange(9, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5, dtype=torch.float64),
    "empty": torch.zeros(0, 4),
}


def _bytes(pieces: list[memoryview]) -> bytes:
    return b"".join(bytes(p) for p in pieces)


def test_library_reads_ours() -> None:
    pieces, size = encode(TENSORS, {"k": "v"})
    raw = _bytes(pieces)
    assert len(raw) == size
    loaded = st_load(raw)
    assert loaded.keys() == TENSORS.keys()
    for key, tensor in TENSORS.items():
        assert torch.equal(loaded[key], tensor) and loaded[key].dtype == tensor.dtype


def test_we_read_the_library() -> None:
    raw = st_save(TENSORS, metadata={"k": "v"})
    tensors, metadata = decode(torch.frombuffer(bytearray(raw), dtype=torch.uint8), "x")
    assert metadata == {"k": "v"}
    for key, tensor in TENSORS.items():
        assert torch.equal(tensors[key], tensor) and tensors[key].dtype == tensor.dtype


def test_encode_is_zero_copy_and_decode_rejects_garbage() -> None:
    big = torch.randn(1000)
    pieces, _ = encode({"big": big})
    assert pieces[1].obj is not None and pieces[1].nbytes == 4000
    big[0] = 42.0
    assert torch.frombuffer(bytearray(pieces[1]), dtype=torch.float32)[0] == 42.0
    raw = bytearray(_bytes(encode({"a": torch.ones(4)})[0]))
    raw[-20] = 0xFF  # inside the JSON header or offsets: must fail cleanly, never crash
    for bad in (bytearray(b"\x01"), bytearray(b"\xff" * 16), raw[:-8]):
        with pytest.raises(TensorFileError, match="x:"):
            decode(torch.frombuffer(bad, dtype=torch.uint8), "x")
    with pytest.raises(TensorFileError, match="contiguous"):
        encode({"t": torch.randn(4, 4).t()})
