"""Weights exports in the Hugging Face layout: what ``from_pretrained`` loads as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from safetensors import safe_open

from ckpt_operator.sdk import CheckpointManager, Consumer
from ckpt_operator.sdk.export import (
    INDEX_FILE,
    ExportError,
    dedupe_tied,
    plan_shards,
    read_tokenizer_files,
)
from ckpt_operator.storage.layout import MANIFEST_NAME
from ckpt_operator.storage.store import Store


def _export_dir(manager: CheckpointManager, uri: str) -> Path:
    return Path(manager.store.resolve(manager.store.rel_from_uri(uri)))


def _tiny_llama() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=True,  # exercises the tied-weights path
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("sharded", [False, True])
def test_from_pretrained_loads_the_export(tmp_path: Path, sharded: bool) -> None:
    transformers = pytest.importorskip("transformers")
    model = _tiny_llama()
    manager = CheckpointManager(Store.from_uri(f"file://{tmp_path}/run"), format="dir")
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    max_shard = total // 4 if sharded else 1 << 30
    export = _export_dir(manager, manager.export_weights(model, 7, max_shard_size=max_shard))

    shards = sorted(p.name for p in export.glob("*.safetensors"))
    if sharded:
        index = json.loads((export / INDEX_FILE).read_text())
        assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert set(index["weight_map"].values()) == set(shards)
        assert index["metadata"]["total_size"] == total
    else:
        assert shards == ["model.safetensors"] and not (export / INDEX_FILE).exists()
    for shard in shards:
        with safe_open(str(export / shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert "lm_head.weight" not in list(f.keys())  # tied to the embedding: stored once
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]

    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(export), use_safetensors=True, local_files_only=True
    ).eval()
    ids = torch.tensor([[1, 5, 9, 3, 62, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

    consumer = Consumer(manager.store, run="local")  # the SDK reads shards too
    tensors = consumer.load_weights()
    assert torch.equal(tensors["model.norm.weight"], model.model.norm.weight)


def test_tokenizer_files_pass_through_and_symlinks_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "tok"
    source.mkdir()
    (source / "tokenizer_config.json").write_text('{"model_max_length": 32}')
    (source / "generation_config.json").write_text('{"max_new_tokens": 8}')
    (source / "modeling_evil.py").write_text("raise SystemExit")  # not data: left behind
    (source / "pytorch_model.bin").write_bytes(b"pickle")
    manager = CheckpointManager(Store.from_uri(f"file://{tmp_path}/run"), format="dir")
    weights = {"w": torch.ones(2, 2)}
    export = _export_dir(
        manager, manager.export_weights(weights, 1, config={"a": 1}, tokenizer_dir=source)
    )
    assert sorted(p.name for p in export.iterdir() if p.name != MANIFEST_NAME) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]
    assert (export / "tokenizer_config.json").read_text() == '{"model_max_length": 32}'

    secret = tmp_path / "secret"
    secret.write_text("do not export")
    os.symlink(secret, source / "tokenizer.json")
    with pytest.raises(ExportError, match="symlink"):
        manager.export_weights(weights, 2, tokenizer_dir=source)
    assert not any("000002" in p for p in os.listdir(tmp_path / "run"))  # nothing committed


def test_tokenizer_refuses_non_regular_files(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").mkdir()
    with pytest.raises(ExportError, match="not a regular file"):
        read_tokenizer_files(tmp_path)


def test_ties_dropped_overlapping_views_kept() -> None:
    base = torch.arange(12.0)
    emb = base.view(3, 4)
    state = {"emb": emb, "head": emb, "same_buffer_other_view": base[4:8], "empty": base[:0]}
    state["empty2"] = torch.empty(0)
    assert list(dedupe_tied(state)) == ["emb", "same_buffer_other_view", "empty", "empty2"]


def test_plan_shards() -> None:
    sizes = {"a": 4, "b": 4, "big": 20, "c": 1}
    assert plan_shards(sizes, 8) == [["a", "b"], ["big"], ["c"]]
    assert plan_shards(sizes, 100) == [["a", "b", "big", "c"]]
    with pytest.raises(ExportError):
        plan_shards(sizes, 0)
