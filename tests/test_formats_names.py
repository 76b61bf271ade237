"""Canonical name mapping: prefixes, fused splits, and llama.cpp's RoPE row order."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.formats.names import ArchParams, gguf_rope_rows, hf_keys, map_gguf_names, map_hf_names


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


# every Hugging Face family the rules cover, with shapes the shape-dependent handlers can split
_HF_SHAPES = {
    "bert.embeddings.word_embeddings.weight": (30, 32),
    "bert.embeddings.position_embeddings.weight": (16, 32),
    "bert.embeddings.token_type_embeddings.weight": (2, 32),
    "bert.embeddings.LayerNorm.weight": (32,),
    "bert.encoder.layer.0.attention.self.query.weight": (32, 32),
    "bert.encoder.layer.0.attention.output.LayerNorm.gamma": (32,),
    "bert.encoder.layer.0.intermediate.dense.bias": (64,),
    "bert.encoder.layer.0.output.LayerNorm.beta": (32,),
    "transformer.wte.weight": (30, 32),
    "transformer.h.1.attn.c_attn.weight": (32, 96),
    "transformer.h.1.attn.c_attn.bias": (96,),
    "transformer.h.1.mlp.c_proj.weight": (128, 32),
    "gpt_neox.layers.2.attention.query_key_value.weight": (96, 32),
    "gpt_neox.layers.2.mlp.dense_4h_to_h.weight": (32, 128),
    "model.layers.3.self_attn.qkv_proj.weight": (96, 32),
    "model.layers.3.mlp.gate_up_proj.weight": (128, 32),
    "model.layers.4.self_attn.W_pack.weight": (96, 32),
    "model.layers.5.self_attn.k_proj.bias": (16,),
    "model.layers.5.post_attention_layernorm.weight": (32,),
    "model.norm.weight": (32,),
    "lm_head.weight": (30, 32),
    "model.layers.5.mlp.experts.0.w1.weight": (8, 32),
    "transformer.ln_f.weight": (32,),
}


def test_hf_keys_from_names_alone_are_the_keys_of_the_full_mapping():
    """What a shard index is enough for: each name's keys, before any shape is known."""
    by_name, unmapped = hf_keys(_HF_SHAPES)
    mappings, full_unmapped = map_hf_names(_HF_SHAPES, ArchParams("unknown", n_heads=4, head_dim=8))
    assert unmapped == full_unmapped
    expected: dict[str, tuple[str, ...]] = {}
    for m in mappings:
        expected[m.source] = (*expected.get(m.source, ()), m.key)
    assert by_name == expected
    assert by_name["model.layers.3.mlp.gate_up_proj.weight"] == ("layers.3.mlp.gate", "layers.3.mlp.up")
    assert by_name["transformer.h.1.attn.c_attn.bias"] == tuple(f"layers.1.attn.{x}.bias" for x in "qkv")
    assert "already comes from model.norm.weight" in unmapped["transformer.ln_f.weight"]
    assert unmapped["model.layers.5.mlp.experts.0.w1.weight"] == "no canonical key"
