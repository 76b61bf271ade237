"""Canonical keys of real transformers checkpoints, checked functionally against the modules' own math.

Tiny models are built with transformers (a dev dependency) and written with ``save_pretrained``,
so names, fused layouts and file formats are exactly what the hub carries. Each fused or transposed
tensor is checked by running the model's own layer on random inputs and comparing with the
canonical weights applied as a plain ``nn.Linear``.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from monitor.formats.canonical import ModelView
from monitor.remote.source import LocalFileSet

transformers = pytest.importorskip("transformers")
torch.manual_seed(0)
X = torch.randn(5, 32)


def _linear(view: ModelView, key: str, x: torch.Tensor) -> torch.Tensor:
    w = torch.from_numpy(view.read(key))
    out = x @ w.T
    if f"{key}.bias" in view.tensors:
        out = out + torch.from_numpy(view.read(f"{key}.bias"))
    return out


def _save(model, path: Path, **kwargs) -> Path:
    model.save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    t = transformers
    built = {
        "gpt2": t.GPT2LMHeadModel(
            t.GPT2Config(
                n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
            )
        ),
        "neox": t.GPTNeoXForCausalLM(
            t.GPTNeoXConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                intermediate_size=64,
                vocab_size=64,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        "phi3": t.Phi3ForCausalLM(
            t.Phi3Config(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                vocab_size=64,
                pad_token_id=0,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        "llama": t.LlamaForCausalLM(
            t.LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                vocab_size=64,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        "qwen2": t.Qwen2ForCausalLM(
            t.Qwen2Config(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                vocab_size=64,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
    }
    for m in built.values():
        m.eval()
    paths = {name: _save(m, root / name) for name, m in built.items()}
    paths["llama-sharded"] = _save(built["llama"], root / "llama-sharded", max_shard_size="20KB")
    paths["llama-bin"] = _torch_checkpoint(built["llama"], root / "llama-bin", shards=1)
    paths["llama-bin-sharded"] = _torch_checkpoint(built["llama"], root / "llama-bin-sharded", shards=3)
    return built, paths


def _torch_checkpoint(model, path: Path, *, shards: int) -> Path:
    """``pytorch_model.bin`` or transformers 4's sharded layout with a ``.bin.index.json``
    (transformers 5 only writes safetensors), written with torch.save."""
    path.mkdir()
    model.config.to_json_file(path / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return path
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, path / shard)
        weight_map |= dict.fromkeys(part, shard)
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


@torch.no_grad()
def test_gpt2_conv1d_and_fused_c_attn(models):
    built, paths = models
    m, view = built["gpt2"], ModelView.open(LocalFileSet(paths["gpt2"]))
    assert view.arch.family == "gpt2"
    assert view.arch.norm == "layernorm"
    assert view.arch.d_ff == 128
    block = m.transformer.h[1]
    q, k, v = block.attn.c_attn(X).split(32, dim=-1)
    for key, ref in (("attn.q", q), ("attn.k", k), ("attn.v", v)):
        torch.testing.assert_close(_linear(view, f"layers.1.{key}", X), ref)
    torch.testing.assert_close(_linear(view, "layers.1.attn.o", X), block.attn.c_proj(X))
    torch.testing.assert_close(_linear(view, "layers.1.mlp.up", X), block.mlp.c_fc(X))
    h = torch.randn(5, 128)
    torch.testing.assert_close(_linear(view, "layers.1.mlp.down", h), block.mlp.c_proj(h))
    up = view.tensors["layers.1.mlp.up"]
    assert up.shape == (128, 32)
    assert up.cols_contiguous
    assert not up.rows_contiguous
    assert view.cost("layers.1.mlp.up", cols=[3]) == 128 * 4  # one stored row of c_fc
    np.testing.assert_array_equal(
        view.read_rows("layers.1.attn.k", [2, 30]), view.read("layers.1.attn.k")[[2, 30]]
    )
    np.testing.assert_array_equal(
        view.read_cols("layers.1.attn.v", [2]), view.read("layers.1.attn.v")[:, [2]].T
    )


@torch.no_grad()
def test_gpt2_gguf_from_the_converter_layout_matches(models, tmp_path):
    _, paths = models
    hf = load_file(paths["gpt2"] / "model.safetensors")
    w = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_embedding_length(32)
    w.add_feed_forward_length(128)
    rename = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
    per_layer = {
        "ln_1": "attn_norm",
        "ln_2": "ffn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    for name, arr in hf.items():
        parts = name.removeprefix("transformer.").split(".")
        if parts[0] == "h":
            module, param = ".".join(parts[2:-1]), parts[-1]
            if module not in per_layer:
                continue
            if param == "weight" and arr.ndim == 2:  # the converter transposes Conv1D weights
                arr = np.ascontiguousarray(arr.T)
            w.add_tensor(f"blk.{parts[1]}.{per_layer[module]}.{param}", arr)
        elif parts[0] in rename:
            w.add_tensor(f"{rename[parts[0]]}.{parts[1]}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gg, st = ModelView.open(LocalFileSet(tmp_path / "gpt2.gguf")), ModelView.open(LocalFileSet(paths["gpt2"]))
    assert set(gg.tensors) == set(st.tensors) - {"lm_head"}
    for key in gg.tensors:
        np.testing.assert_array_equal(gg.read(key), st.read(key), err_msg=key)


@torch.no_grad()
def test_gpt_neox_per_head_interleaved_qkv(models):
    built, paths = models
    m, view = built["neox"], ModelView.open(LocalFileSet(paths["neox"]))
    assert view.arch.family == "gpt_neox"
    assert "lm_head" in view.tensors
    attn = m.gpt_neox.layers[0].attention
    qkv = attn.query_key_value(X).view(5, 4, 3 * 8)
    for i, key in enumerate(("attn.q", "attn.k", "attn.v")):
        torch.testing.assert_close(
            _linear(view, f"layers.0.{key}", X), qkv[..., i * 8 : (i + 1) * 8].reshape(5, 32)
        )
    torch.testing.assert_close(_linear(view, "layers.0.mlp.up", X), m.gpt_neox.layers[0].mlp.dense_h_to_4h(X))


@torch.no_grad()
def test_phi3_fused_qkv_with_gqa_and_gate_up(models):
    built, paths = models
    m, view = built["phi3"], ModelView.open(LocalFileSet(paths["phi3"]))
    assert view.arch.family == "phi3"
    assert view.arch.n_kv_heads == 2
    assert view.arch.gated_mlp
    layer = m.model.layers[1]
    qkv = layer.self_attn.qkv_proj(X)
    torch.testing.assert_close(_linear(view, "layers.1.attn.q", X), qkv[:, :32])
    torch.testing.assert_close(_linear(view, "layers.1.attn.k", X), qkv[:, 32:48])
    torch.testing.assert_close(_linear(view, "layers.1.attn.v", X), qkv[:, 48:])
    gate, up = layer.mlp.gate_up_proj(X).chunk(2, dim=-1)
    torch.testing.assert_close(_linear(view, "layers.1.mlp.gate", X), gate)
    torch.testing.assert_close(_linear(view, "layers.1.mlp.up", X), up)


@torch.no_grad()
def test_qwen2_biases(models):
    built, paths = models
    m, view = built["qwen2"], ModelView.open(LocalFileSet(paths["qwen2"]))
    assert view.arch.family == "llama"
    assert view.arch.extra["model_type"] == "qwen2"
    torch.testing.assert_close(_linear(view, "layers.0.attn.k", X), m.model.layers[0].self_attn.k_proj(X))
    assert "layers.0.attn.k.bias" in view.tensors
    assert "layers.0.attn.o.bias" not in view.tensors


@pytest.mark.parametrize("variant", ["llama-bin", "llama-sharded", "llama-bin-sharded"])
def test_llama_formats_and_shards_agree(models, variant):
    _, paths = models
    ref = ModelView.open(LocalFileSet(paths["llama"]))
    fs = LocalFileSet(paths[variant])
    view = ModelView.open(fs)
    assert view.format == ("torch" if "bin" in variant else "safetensors")
    if "sharded" in variant:
        assert view.selection.index is not None
        assert len(view.weight_files) > 1
    assert set(view.tensors) == set(ref.tensors) - ({"lm_head"} if "bin" in variant else set())
    if "bin" not in variant:
        assert view.arch == ref.arch
    for key in view.tensors:
        np.testing.assert_array_equal(view.read(key), ref.read(key), err_msg=key)


def test_baichuan_w_pack_splits_in_thirds(tmp_path):
    rng = np.random.default_rng(0)
    w_pack = rng.standard_normal((96, 32)).astype(np.float32)
    root = tmp_path / "baichuan"
    root.mkdir()
    save_file(
        {
            "model.layers.0.self_attn.W_pack.weight": w_pack,
            "model.embed_tokens.weight": rng.standard_normal((10, 32)).astype(np.float32),
        },
        root / "model.safetensors",
    )
    (root / "config.json").write_text(
        json.dumps(
            {"model_type": "baichuan", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1}
        )
    )
    view = ModelView.open(LocalFileSet(root))
    for i, key in enumerate(("q", "k", "v")):
        np.testing.assert_array_equal(view.read(f"layers.0.attn.{key}"), w_pack[32 * i : 32 * (i + 1)])
    assert view.cost("layers.0.attn.k", rows=[0]) == 32 * 4
