"""Canonical name mapping: prefixes, fused splits, and llama.cpp's RoPE row order."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.formats.names import ArchParams, gguf_rope_rows, map_gguf_names, map_hf_names


@pytest.mark.parametrize(("n_rows", "n_head"), [(64, 1), (576, 9), (192, 3), (4096, 32), (1024, 8)])
def test_rope_rows_invert_the_converter_permutation(n_rows, n_head):
    hf_rows = np.arange(n_rows)
    # llama.cpp: reshape(n_head, 2, hd/2).swapaxes(1, 2): GGUF row g holds HF row stored[g]
    stored = hf_rows.reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)
    np.testing.assert_array_equal(stored[gguf_rope_rows(n_rows, n_head)], hf_rows)


def _keys(mappings):
    return {m.key: m for m in mappings}


def test_hf_prefixes_and_old_layernorm_names():
    shapes = {
        "module.bert.encoder.layer.0.attention.output.LayerNorm.gamma": (8,),
        "bert.embeddings.LayerNorm.beta": (8,),
        "model.layers.3.self_attn.o_proj.weight": (8, 8),
        "transformer.h.1.ln_2.bias": (8,),
        "gpt_neox.final_layer_norm.weight": (8,),
        "cls.predictions.bias": (9,),
    }
    mappings, unmapped = map_hf_names(shapes, ArchParams("unknown"))
    assert set(_keys(mappings)) == {
        "layers.0.mlp_norm",
        "embed_norm.bias",
        "layers.3.attn.o",
        "layers.1.mlp_norm.bias",
        "final_norm",
    }
    assert unmapped == {"cls.predictions.bias": "no canonical key"}


def test_conflicting_sources_keep_the_first():
    mappings, unmapped = map_hf_names(
        {"model.norm.weight": (8,), "transformer.ln_f.weight": (8,)}, ArchParams("x")
    )
    assert [m.source for m in mappings] == ["model.norm.weight"]
    assert "already comes from model.norm.weight" in unmapped["transformer.ln_f.weight"]


def test_neox_split_needs_head_count():
    shapes = {"gpt_neox.layers.0.attention.query_key_value.weight": (96, 32)}
    _, unmapped = map_hf_names(shapes, ArchParams("gpt_neox"))
    assert "num_attention_heads" in unmapped["gpt_neox.layers.0.attention.query_key_value.weight"]
    mappings, _ = map_hf_names(shapes, ArchParams("gpt_neox", n_heads=4))
    k = _keys(mappings)["layers.0.attn.k"]
    np.testing.assert_array_equal(k.index[:9], [8, 9, 10, 11, 12, 13, 14, 15, 32])


def test_phi3_qkv_without_config_assumes_q_equals_d_model():
    mappings, _ = map_hf_names({"model.layers.0.self_attn.qkv_proj.weight": (64, 32)}, ArchParams("phi3"))
    sizes = {m.key: len(m.index) for m in mappings}
    assert sizes == {"layers.0.attn.q": 32, "layers.0.attn.k": 16, "layers.0.attn.v": 16}


def test_gguf_permutation_depends_on_the_architecture():
    shapes = {"blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (32, 64), "blk.0.attn_k.bias": (32,)}
    llama, _ = map_gguf_names(shapes, ArchParams("llama", n_heads=4, n_kv_heads=2, gguf_arch="llama"))
    qwen, _ = map_gguf_names(shapes, ArchParams("llama", n_heads=4, n_kv_heads=2, gguf_arch="qwen2"))
    assert all(m.index is None for m in qwen)
    k = _keys(llama)
    np.testing.assert_array_equal(k["layers.0.attn.k"].index, gguf_rope_rows(32, 2))
    np.testing.assert_array_equal(k["layers.0.attn.k.bias"].index, gguf_rope_rows(32, 2))
    _, unmapped = map_gguf_names(shapes, ArchParams("llama", gguf_arch="llama"))
    assert "RoPE" in unmapped["blk.0.attn_q.weight"]


def test_gguf_phi3_fused_gate_up_and_qkv():
    shapes = {"blk.0.ffn_up.weight": (128, 32), "blk.0.attn_qkv.weight": (64, 32)}
    mappings, unmapped = map_gguf_names(
        shapes, ArchParams("phi3", n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64, gguf_arch="phi3")
    )
    k = _keys(mappings)
    assert not unmapped
    assert (k["layers.0.mlp.gate"].index[0], k["layers.0.mlp.up"].index[0]) == (0, 64)
    assert [len(k[f"layers.0.attn.{x}"].index) for x in "qkv"] == [32, 16, 16]
