"""ModelView on real assets and on HF ↔ GGUF round trips (RoPE permutation, fused QKV, BERT names)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.base import WeightFile
from monitor.formats.canonical import ModelView
from monitor.formats.gguf_quants import quantize
from monitor.formats.names import gguf_rope_rows
from monitor.formats.vocab import vocab_from_vocab_txt
from monitor.remote.source import LocalFileSet

# -- real assets ----------------------------------------------------------------------------------


def test_minilm_view(minilm_dir):
    fs = LocalFileSet(minilm_dir)
    view = ModelView.open(fs)
    a = view.arch
    assert (a.family, a.n_layers, a.d_model, a.d_ff, a.n_heads, a.head_dim, a.vocab_size, a.norm) == (
        "bert",
        6,
        384,
        1536,
        12,
        32,
        30522,
        "layernorm",
    )
    assert not a.gated_mlp
    assert a.quantization is None
    assert view.format == "safetensors"
    assert view.selection.files == ("model.safetensors",)
    # headers only: the first 64 KiB of the weights and config.json
    assert fs.stats.by_file == {"model.safetensors": 65536, "config.json": 612}
    for i in range(6):
        for key in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down", "mlp_norm", "out_norm"):
            assert f"layers.{i}.{key}" in view.tensors
            assert f"layers.{i}.{key}.bias" in view.tensors
    assert {"embed", "pos_embed", "type_embed", "embed_norm", "embed_norm.bias"} <= set(view.tensors)
    assert "lm_head" not in view.tensors
    assert a.extra["tied_embeddings"]
    assert set(view.unmapped) == {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    ref = load_file(minilm_dir / "model.safetensors")
    pairs = {
        "embed": "embeddings.word_embeddings.weight",
        "layers.2.mlp.up": "encoder.layer.2.intermediate.dense.weight",
        "layers.2.mlp.down": "encoder.layer.2.output.dense.weight",
        "layers.5.mlp_norm.bias": "encoder.layer.5.attention.output.LayerNorm.bias",
        "layers.5.out_norm": "encoder.layer.5.output.LayerNorm.weight",
    }
    for key, name in pairs.items():
        np.testing.assert_array_equal(view.read(key), ref[name])
    before = fs.stats.bytes_read
    rows = view.read_rows("layers.2.mlp.up", range(100, 132))
    np.testing.assert_array_equal(rows, ref["encoder.layer.2.intermediate.dense.weight"][100:132])
    assert fs.stats.bytes_read - before == view.cost("layers.2.mlp.up", rows=range(100, 132)) == 32 * 384 * 4
    units = view.read_cols("layers.2.mlp.down", [7, 1000])
    np.testing.assert_array_equal(units, ref["encoder.layer.2.output.dense.weight"][:, [7, 1000]].T)


def test_minilm_vocab_and_tokenizer_digest(minilm_dir):
    fs = LocalFileSet(minilm_dir)
    view = ModelView.open(fs)
    before = fs.stats.bytes_read
    listed = fs.files["tokenizer.json"].blob_id  # what the listing says; None if it says nothing
    assert view.tokenizer_digest == (f"git-blob:{listed}" if listed else None)
    assert fs.stats.bytes_read == before  # the digest costs no read
    vocab = view.vocab()
    assert fs.stats.bytes_read - before == (minilm_dir / "tokenizer.json").stat().st_size
    assert vocab == vocab_from_vocab_txt((minilm_dir / "vocab.txt").read_bytes())
    assert len(vocab) == 30522
    assert vocab[101] == "[CLS]"
    assert vocab[2023] == "this"
    digest = fs.sha256("tokenizer.json")
    assert view.tokenizer_digest == f"sha256:{digest}"


def test_smollm_gguf_view(smollm_gguf):
    fs = LocalFileSet(smollm_gguf)
    view = ModelView.open(fs)
    a = view.arch
    assert (a.family, a.n_layers, a.d_model, a.d_ff, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == (
        "llama",
        30,
        576,
        1536,
        9,
        3,
        64,
        49152,
    )
    assert a.norm == "rmsnorm"
    assert a.gated_mlp
    assert a.quantization == "gguf:Q4_1"
    assert a.extra["tied_embeddings"]
    assert not view.unmapped
    assert len(view.tensors) == 2 + 30 * 9
    assert fs.stats.requests == 1
    assert fs.stats.bytes_read == 2 * 1024 * 1024
    tokens = view.vocab()
    assert len(tokens) == 49152
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert view.tokenizer_digest.startswith("gguf-tokens-sha256:")
    reader = gguf.GGUFReader(smollm_gguf)
    by_name = {t.name: t for t in reader.tensors}

    def full(name: str) -> np.ndarray:
        t = by_name[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))

    q_file, k_file = full("blk.4.attn_q.weight"), full("blk.4.attn_k.weight")
    # undo llama.cpp's permute: rows of each head viewed (head_dim/2, 2) back to (2, head_dim/2)
    q_hf = q_file.reshape(9, 32, 2, 576).swapaxes(1, 2).reshape(576, 576)
    k_hf = k_file.reshape(3, 32, 2, 576).swapaxes(1, 2).reshape(192, 576)
    np.testing.assert_array_equal(view.read("layers.4.attn.q"), q_hf)
    np.testing.assert_array_equal(
        view.read_rows("layers.4.attn.k", [0, 31, 32, 63, 191]), k_hf[[0, 31, 32, 63, 191]]
    )
    np.testing.assert_array_equal(view.read_rows("embed", [0, 49151]), full("token_embd.weight")[[0, 49151]])
    np.testing.assert_array_equal(
        view.read_cols("layers.4.mlp.down", [3]), full("blk.4.ffn_down.weight")[:, [3]].T
    )


# -- synthetic HF llama -> GGUF round trip ---------------------------------------------------------

D, FF, HEADS, KV, LAYERS, VOCAB = 256, 512, 8, 2, 2, 96
HD = D // HEADS


def convert_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute, written out independently."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_llama(rng: np.random.Generator, *, bias: bool = False) -> dict[str, np.ndarray]:
    t = {
        "model.embed_tokens.weight": rng.standard_normal((VOCAB, D)),
        "model.norm.weight": rng.random(D),
        "lm_head.weight": rng.standard_normal((VOCAB, D)),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": rng.random(D),
            p + "post_attention_layernorm.weight": rng.random(D),
            p + "self_attn.q_proj.weight": rng.standard_normal((HEADS * HD, D)),
            p + "self_attn.k_proj.weight": rng.standard_normal((KV * HD, D)),
            p + "self_attn.v_proj.weight": rng.standard_normal((KV * HD, D)),
            p + "self_attn.o_proj.weight": rng.standard_normal((D, HEADS * HD)),
            p + "mlp.gate_proj.weight": rng.standard_normal((FF, D)),
            p + "mlp.up_proj.weight": rng.standard_normal((FF, D)),
            p + "mlp.down_proj.weight": rng.standard_normal((D, FF)),
        }
        if bias:
            t |= {
                p + "self_attn.q_proj.bias": rng.standard_normal(HEADS * HD),
                p + "self_attn.k_proj.bias": rng.standard_normal(KV * HD),
                p + "self_attn.v_proj.bias": rng.standard_normal(KV * HD),
            }
    return {k: v.astype(np.float32) for k, v in t.items()}


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _to_gguf(hf: dict[str, np.ndarray], path: Path, *, arch: str, permute: bool, qtype=None) -> Path:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(LAYERS)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    for name, arr in hf.items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            _, _, layer, *rest = name.split(".")
            module, param = ".".join(rest[:-1]), rest[-1]
            out = f"blk.{layer}.{GGUF_NAMES[module]}.{param}"
            if permute and module == "self_attn.q_proj":
                arr = convert_permute(arr, HEADS)
            elif permute and module == "self_attn.k_proj":
                arr = convert_permute(arr, KV)
        if qtype is not None and arr.ndim == 2:
            w.add_tensor(out, quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _hf_dir(hf: dict[str, np.ndarray], root: Path, model_type: str = "llama") -> Path:
    root.mkdir(parents=True)
    save_file(hf, root / "model.safetensors")
    (root / "config.json").write_text(
        json.dumps(
            {
                "model_type": model_type,
                "hidden_size": D,
                "intermediate_size": FF,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS,
                "num_key_value_heads": KV,
                "vocab_size": VOCAB,
            }
        )
    )
    return root


@pytest.mark.parametrize(("arch", "permute", "bias"), [("llama", True, False), ("qwen2", False, True)])
def test_hf_and_gguf_views_agree_exactly(tmp_path, arch, permute, bias):
    hf = _hf_llama(np.random.default_rng(3), bias=bias)
    hf_view = ModelView.open(LocalFileSet(_hf_dir(hf, tmp_path / "hf", "llama" if arch == "llama" else arch)))
    gg_view = ModelView.open(LocalFileSet(_to_gguf(hf, tmp_path / "m.gguf", arch=arch, permute=permute)))
    assert set(hf_view.tensors) == set(gg_view.tensors)
    assert hf_view.arch.n_heads == gg_view.arch.n_heads == HEADS
    assert gg_view.arch.n_kv_heads == KV
    for key in hf_view.tensors:
        np.testing.assert_array_equal(gg_view.read(key), hf_view.read(key), err_msg=key)
    rows = np.random.default_rng(0).choice(HEADS * HD, 40, replace=False)
    np.testing.assert_array_equal(
        gg_view.read_rows("layers.1.attn.q", rows), hf_view.read_rows("layers.1.attn.q", rows)
    )
    np.testing.assert_array_equal(
        gg_view.read_cols("layers.1.attn.k", [0, 255]), hf_view.read_cols("layers.1.attn.k", [0, 255])
    )


def test_rope_unpermute_reads_only_the_mapped_rows(tmp_path):
    hf = _hf_llama(np.random.default_rng(4))
    fs = LocalFileSet(_to_gguf(hf, tmp_path / "m.gguf", arch="llama", permute=True))
    view = ModelView.open(fs)
    before = fs.stats.bytes_read
    rows = [0, 1, 16, 17]  # HF rows of head 0: GGUF rows 0, 2, 1, 3
    np.testing.assert_array_equal(
        view.read_rows("layers.0.attn.q", rows), hf["model.layers.0.self_attn.q_proj.weight"][rows]
    )
    assert fs.stats.bytes_read - before == 4 * D * 4
    np.testing.assert_array_equal(gguf_rope_rows(HEADS * HD, HEADS)[rows], [0, 2, 1, 3])


@pytest.mark.parametrize(("qtype", "tol"), [("Q8_0", 0.02), ("Q4_K", 0.12), ("Q6_K", 0.04)])
def test_quantised_gguf_round_trip_is_close(tmp_path, qtype, tol):
    hf = _hf_llama(np.random.default_rng(5))
    hf_view = ModelView.open(LocalFileSet(_hf_dir(hf, tmp_path / "hf")))
    fs = LocalFileSet(
        _to_gguf(hf, tmp_path / "m.gguf", arch="llama", permute=True, qtype=gguf.GGMLQuantizationType[qtype])
    )
    gg_view = ModelView.open(fs)
    assert gg_view.arch.quantization == f"gguf:{qtype}"
    for key in ("layers.0.attn.q", "layers.1.attn.k", "layers.1.mlp.down", "embed"):
        a, b = gg_view.read(key), hf_view.read(key)
        assert np.sqrt(np.mean((a - b) ** 2)) / b.std() < tol, key
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_read_batch_fetches_everything_at_once(tmp_path):
    hf = _hf_llama(np.random.default_rng(6))
    fs = LocalFileSet(_hf_dir(hf, tmp_path / "hf"))
    view = ModelView.open(fs)
    before = fs.stats.snapshot()
    norms, ups = view.read_batch([("layers.0.attn_norm", None, None), ("layers.1.mlp.up", [3, 4], None)])
    np.testing.assert_array_equal(norms, hf["model.layers.0.input_layernorm.weight"])
    np.testing.assert_array_equal(ups, hf["model.layers.1.mlp.up_proj.weight"][[3, 4]])
    assert fs.stats.requests - before["requests"] == 2  # two disjoint spans in one read_many
    assert fs.stats.bytes_read - before["bytes_read"] == D * 4 + 2 * D * 4


def test_gguf_repo_with_several_quantisations_prefers_q8_0(tmp_path):
    hf = _hf_llama(np.random.default_rng(7))
    repo = tmp_path / "repo"
    repo.mkdir()
    for qtype in ("Q4_K", "Q8_0"):
        _to_gguf(
            hf,
            repo / f"tiny-{qtype.replace('_', '-').lower()}.{qtype}.gguf",
            arch="llama",
            permute=True,
            qtype=gguf.GGMLQuantizationType[qtype],
        )
    fs = LocalFileSet(repo)
    view = ModelView.open(fs)
    assert view.selection.files == ("tiny-q8-0.Q8_0.gguf",)
    assert list(fs.stats.by_file) == ["tiny-q8-0.Q8_0.gguf"]
    other = ModelView.open(LocalFileSet(repo), weights="tiny-q4-k.Q4_K.gguf")
    assert other.arch.quantization == "gguf:Q4_K"


def test_sharded_gguf_series_is_one_model(tmp_path):
    hf = _hf_llama(np.random.default_rng(8))
    repo = tmp_path / "repo"
    repo.mkdir()
    w = gguf.GGUFWriter(repo / "tiny-Q8_0.gguf", "llama", split_max_tensors=8)
    w.add_block_count(LAYERS)
    w.add_embedding_length(D)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    for name, arr in hf.items():
        _, _, layer, *rest = name.split(".") if name.startswith("model.layers.") else ("", "", "", name)
        if layer:
            module = ".".join(rest[:-1])
            if module in ("self_attn.q_proj", "self_attn.k_proj"):
                arr = convert_permute(arr, HEADS if module == "self_attn.q_proj" else KV)
            out = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
        else:
            out = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        w.add_tensor(out, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    view = ModelView.open(LocalFileSet(repo))
    assert len(view.selection.files) == len(list(repo.glob("*.gguf"))) > 1
    hf_view = ModelView.open(LocalFileSet(_hf_dir(hf, tmp_path / "hf")))
    assert set(view.tensors) == set(hf_view.tensors)
    assert view.arch.n_layers == LAYERS
    for key in ("layers.1.attn.k", "layers.0.mlp.down", "lm_head"):
        np.testing.assert_array_equal(view.read(key), hf_view.read(key))


def test_weight_files_satisfy_the_protocol(minilm_dir, smollm_gguf, tmp_path):
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / "m.pt")
    for root in (minilm_dir, smollm_gguf, tmp_path / "m.pt"):
        for wf in ModelView.open(LocalFileSet(root)).weight_files:
            assert isinstance(wf, WeightFile)
            assert wf.format in ("safetensors", "gguf", "torch")


def test_bert_gguf_names_match_the_safetensors_view(minilm_dir, tmp_path):
    ref = load_file(minilm_dir / "model.safetensors")
    names = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    per_layer = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    w = gguf.GGUFWriter(tmp_path / "bert.gguf", "bert")
    w.add_block_count(2)
    w.add_head_count(12)
    w.add_embedding_length(384)
    for src, dst in names.items():
        w.add_tensor(dst, ref[src][:1000] if "word_embeddings" in src else ref[src])
    for i in range(2):
        for src, dst in per_layer.items():
            for param in ("weight", "bias"):
                w.add_tensor(f"blk.{i}.{dst}.{param}", ref[f"encoder.layer.{i}.{src}.{param}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gg = ModelView.open(LocalFileSet(tmp_path / "bert.gguf"))
    st = ModelView.open(LocalFileSet(minilm_dir))
    assert gg.arch.family == "bert"
    assert gg.arch.norm == "layernorm"
    assert not gg.unmapped
    for key in gg.tensors:
        expected = st.read(key)[:1000] if key == "embed" else st.read(key)
        np.testing.assert_array_equal(gg.read(key), expected, err_msg=key)


# -- errors ----------------------------------------------------------------------------------------


def test_caller_and_file_errors(tmp_path, minilm_dir):
    view = ModelView.open(LocalFileSet(minilm_dir))
    with pytest.raises(KeyError, match="no canonical tensor"):
        view.read("layers.9.mlp.up")
    with pytest.raises(ValueError, match=r"2-D"):
        view.read_cols("layers.0.mlp_norm", [0])
    with pytest.raises(ValueError, match="not both"):
        view.plan("embed", rows=[0], cols=[0])
    with pytest.raises(IndexError):
        view.read_rows("embed", [30522])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here")
    with pytest.raises(UnsupportedFormat, match="no weight files"):
        ModelView.open(LocalFileSet(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"w": np.ones((2, 2), np.float32)}, bad / "model.safetensors")
    (bad / "config.json").write_text('{"model_type": "llama", "model_type": "bert"}')
    with pytest.raises(FormatError, match=r"config\.json: duplicate JSON key"):
        ModelView.open(LocalFileSet(bad))
