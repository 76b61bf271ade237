"""The virtual GGUF kind against gguf-py and our reader, its tokenizer, and virtual files read from disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import httpx2
import numpy as np
import pytest
from gguf.quants import dequantize
from huggingface_hub import HfApi
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.localhub import LocalHub
from monitor.localhub.virtual import VirtualFile, materialize, open_virtual
from monitor.localhub.virtual_gguf import VirtualGGUF, llama_cpp_type, write_virtual_gguf
from monitor.localhub.virtual_llama import (
    LLAMA_7B,
    LLAMA_70B,
    LlamaShape,
    llama_tensor_specs,
    write_virtual_llama,
)
from monitor.localhub.virtual_vocab import llama_vocab, tokenizer_json
from monitor.remote.source import LocalFileSet
from monitor.synth.export import llama_cpp_permute

SHAPE = LlamaShape(d_model=256, n_layers=2, d_ff=512, n_heads=4, n_kv_heads=2, vocab=1024)
DERIVATION = {"base_seed": 3, "noise_seed": 4, "rel_noise": 0.1}
SPEC: dict[str, Any] = {"kind": "gguf", "model": SHAPE.to_spec(), "derivation": DERIVATION, "name": "t"}


@pytest.fixture(scope="module")
def vg() -> VirtualGGUF:
    vf = VirtualFile.from_spec(SPEC)
    assert isinstance(vf, VirtualGGUF)
    return vf


@pytest.fixture(scope="module")
def materialized(vg: VirtualGGUF, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("g") / "t.Q4_K_M.gguf"
    assert materialize(vg, path) == vg.size == path.stat().st_size
    return path


@pytest.fixture(scope="module")
def base_weights() -> VirtualFile:
    """The BF16 safetensors checkpoint of the same derivation (what the GGUF was "converted" from)."""
    return VirtualFile.from_spec(
        {"kind": "safetensors", "derivation": DERIVATION, "tensors": llama_tensor_specs(SHAPE)}
    )


def test_gguf_py_reads_the_header(vg: VirtualGGUF, materialized: Path) -> None:
    reader = gguf.GGUFReader(materialized)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    vocab = llama_vocab(SHAPE.vocab)
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert (fields["llama.block_count"], fields["llama.embedding_length"]) == (2, 256)
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert fields["llama.rope.dimension_count"] == 64
    assert fields["tokenizer.ggml.tokens"] == list(vocab.tokens)
    assert fields["tokenizer.ggml.token_type"] == list(vocab.types)
    np.testing.assert_array_equal(fields["tokenizer.ggml.scores"], np.asarray(vocab.scores, dtype=np.float32))
    assert [t.name for t in reader.tensors] == [t.name for t in vg.tensors]
    for rt, vt in zip(reader.tensors, vg.tensors, strict=True):
        assert (rt.tensor_type, int(rt.data_offset), int(rt.n_bytes)) == (vt.qtype, vt.offset, vt.nbytes)
        assert tuple(int(d) for d in reversed(rt.shape)) == vt.shape


@pytest.mark.parametrize(
    ("hf", "name", "heads", "tolerance"),
    [
        ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4, 0.1),
        ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2, 0.1),
        ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", 0, 0.1),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", 0, 0.03),  # a Q6_K layer
        ("model.embed_tokens.weight", "token_embd.weight", 0, 0.1),
        ("lm_head.weight", "output.weight", 0, 0.03),
        ("model.norm.weight", "output_norm.weight", 0, 0.0),
    ],
)
def test_tensors_are_the_quantised_checkpoint(
    materialized: Path, base_weights: Any, hf: str, name: str, heads: int, tolerance: float
) -> None:
    tensor = next(t for t in gguf.GGUFReader(materialized).tensors if t.name == name)
    values = dequantize(tensor.data, tensor.tensor_type).reshape(base_weights.tensor(hf).shape)
    expected = base_weights.tensor(hf)
    if heads:  # rows permuted for RoPE exactly as convert_hf_to_gguf does
        assert _rel_rms(values, llama_cpp_permute(expected, heads)) < tolerance < _rel_rms(values, expected)
        expected = llama_cpp_permute(expected, heads)
    assert _rel_rms(values, expected) <= tolerance
    if tolerance == 0.0:
        np.testing.assert_array_equal(values, expected)


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.std(b))


@pytest.fixture(scope="module")
def raw(materialized: Path) -> bytes:
    return materialized.read_bytes()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_range_equals_materialized_bytes(data: st.DataObject, vg: VirtualGGUF, raw: bytes) -> None:
    start = data.draw(st.integers(0, vg.size))
    end = data.draw(st.integers(start, min(vg.size, start + data.draw(st.sampled_from([64, 5000, 10**6])))))
    assert vg.read(start, end) == raw[start:end]


def test_quantisation_mix_is_llama_quantize_q4_k_m() -> None:
    v7 = VirtualGGUF({"kind": "gguf", "model": LLAMA_7B.to_spec(), "seed": 1})
    types = {t.name: t.qtype.name for t in v7.tensors}
    assert Counter(types.values()) == {"Q4_K": 193, "Q6_K": 33, "F32": 65}
    assert (types["token_embd.weight"], types["output.weight"]) == ("Q4_K", "Q6_K")
    # more bits: the first and last eighth of the layers, and every third layer between
    assert [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == [
        0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31,
    ]  # fmt: skip
    # TheBloke's llama-2-7b.Q4_K_M.gguf has 4,081,004,224 bytes: the same mix, a header 37 kB shorter
    assert v7.size - v7.data_offset == 4_080_263_168
    assert abs(v7.size - 4_081_004_224) < 50_000
    assert 700_000 < v7.header_bytes < 1_000_000
    v70 = VirtualGGUF({"kind": "gguf", "model": LLAMA_70B.to_spec(), "seed": 1})
    t70 = {t.name: t.qtype.name for t in v70.tensors}
    assert (t70["blk.40.attn_v.weight"], t70["blk.42.attn_v.weight"]) == ("Q5_K", "Q6_K")  # LLM_TYPE_70B
    assert llama_cpp_type("Q4_K_M", "blk.0.ffn_up.weight", (176, 64), n_layers=2).name == "Q5_0"  # fallback
    assert llama_cpp_type("Q4_K_M", "blk.0.ffn_down.weight", (64, 176), n_layers=2).name == "F16"
    assert (
        llama_cpp_type("Q4_K_M", "token_embd.weight", (30522, 384), n_layers=6, has_output=False).name
        == "Q8_0"
    )
    assert llama_cpp_type("Q8_0", "blk.0.attn_v.weight", (256, 256), n_layers=2).name == "Q8_0"
    with pytest.raises(ValueError, match="file_type"):
        llama_cpp_type("Q3_K_S", "blk.0.ffn_up.weight", (256, 256), n_layers=2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"extra": 1}, "unknown keys"),
        ({"file_type": "Q2_K"}, "file_type"),
        ({"derivation": None}, "seed"),
        ({"derivation": {"base_seed": 1}}, "derivation"),
        ({"model": {"d_model": 64}}, "model"),
        ({"model": {**SHAPE.to_spec(), "d_model": 258}}, "divisible"),
        ({"model": {**SHAPE.to_spec(), "vocab": 10}}, "at least 64"),
        ({"model": {**SHAPE.to_spec(), "n_layers": True}}, "positive integer"),
        ({"source_dtype": "I8"}, "source_dtype"),
        ({"init": {"std": -1}}, "init.std"),
        ({"version": 2}, "version"),
    ],
)
def test_invalid_specs(change: dict[str, Any], match: str) -> None:
    spec = {k: v for k, v in (SPEC | change).items() if v is not None}
    with pytest.raises(FormatError, match=match):
        VirtualFile.from_spec(spec)


def test_vocabulary_is_deterministic_and_llama_like() -> None:
    v = llama_vocab(1024)
    assert v is llama_vocab(1024)  # cached
    assert v.tokens[:4] == ("<unk>", "<s>", "</s>", "<0x00>")
    assert v.tokens[258] == "<0xFF>"
    assert v.types[:4] == (2, 3, 3, 6)
    assert set(v.types[259:]) == {1}
    assert len(set(v.tokens)) == 1024
    assert all(a + b in set(v.tokens) for a, b in v.merges)
    assert any(t.startswith("\u2581") for t in v.tokens[259:])
    other = llama_vocab(1024, seed=1)
    assert other.tokens[:259] == v.tokens[:259]
    assert other.tokens != v.tokens
    assert llama_vocab(64).tokens[:3] == ("<unk>", "<s>", "</s>")
    assert not llama_vocab(64).byte_fallback
    with pytest.raises(ValueError, match="at least 64"):
        llama_vocab(63)


def test_tokenizer_json_loads_with_tokenizers_and_matches_the_gguf_tokens(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = llama_vocab(SHAPE.vocab)
    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(vocab)))
    assert tok.get_vocab_size() == SHAPE.vocab
    enc = tok.encode("the stand is ? \u00e9")
    assert enc.ids[0] == 1  # <s>
    assert all(0 <= i < SHAPE.vocab for i in enc.ids)
    assert tok.decode(enc.ids, skip_special_tokens=True) == "the stand is ? \u00e9"
    write_virtual_llama(tmp_path / "st", SHAPE, seed=3)
    write_virtual_gguf(tmp_path / "gg", SHAPE, seed=3)
    st_view = ModelView.open(LocalFileSet(tmp_path / "st"))
    gg_view = ModelView.open(LocalFileSet(tmp_path / "gg"))
    assert st_view.vocab() == gg_view.vocab() == list(vocab.tokens)


def test_served_by_the_hub_and_read_back_through_our_reader(tmp_path: Path, base_weights: Any) -> None:
    path = write_virtual_gguf(tmp_path / "acme" / "m-GGUF", SHAPE, seed=None, derivation=DERIVATION, stem="m")
    assert path.name == "m.Q4_K_M.gguf.virtual.json"
    vg = open_virtual(path)
    with LocalHub(tmp_path) as hub:
        info = HfApi(endpoint=hub.endpoint).model_info("acme/m-GGUF", files_metadata=True)
        sibling = next(s for s in info.siblings if s.rfilename == "m.Q4_K_M.gguf")
        assert (sibling.size, sibling.lfs.sha256) == (vg.size, vg.sha256)
        assert info.gguf["architecture"] == "llama"
        start = vg.tensor_info("blk.1.ffn_up.weight").offset - 100
        with httpx2.Client(follow_redirects=True) as client:
            r = client.get(
                f"{hub.endpoint}/acme/m-GGUF/resolve/main/m.Q4_K_M.gguf",
                headers={"Range": f"bytes={start}-{start + 9999}"},
            )
        assert r.status_code == 206
        assert r.content == vg.read(start, start + 10_000)
    view = ModelView.open(LocalFileSet(tmp_path / "acme" / "m-GGUF"))
    assert (view.arch.family, view.arch.quantization, view.arch.n_layers) == ("llama", "gguf:Q4_K_M", 2)
    # our reader undoes the RoPE permutation: canonical rows equal the checkpoint's rows (to Q4_K error)
    rows = view.read_rows("layers.1.attn.q", range(0, 130))
    assert _rel_rms(rows, base_weights.tensor("model.layers.1.self_attn.q_proj.weight")[:130]) < 0.1


# -- virtual files from disk (LocalFileSet) ------------------------------------------------------------


def test_local_file_set_lists_virtual_files_as_the_hub_does(tmp_path: Path) -> None:
    repo = tmp_path / "acme" / "m"
    write_virtual_llama(repo, SHAPE, seed=3, max_shard_bytes=1_000_000)
    write_virtual_gguf(repo, SHAPE, seed=3, stem="m")
    fs = LocalFileSet(repo)
    specs = sorted(p.name for p in repo.glob("*.virtual.json"))
    assert not any(p.endswith(".virtual.json") for p in fs.files)
    with LocalHub(tmp_path) as hub:
        listed = {
            s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None)
            for s in HfApi(endpoint=hub.endpoint).model_info("acme/m", files_metadata=True).siblings
        }
    for name in specs:
        served = name.removesuffix(".virtual.json")
        vf = open_virtual(repo / name)
        assert listed[served] == (fs.files[served].size, fs.sha256(served)) == (vf.size, vf.sha256)
        src = fs.open(served)
        assert src.read(vf.size - 1000, vf.size) == vf.read(vf.size - 1000, vf.size)
    assert fs.stats.requests == len(specs)
    assert fs.stats.bytes_read == 1000 * len(specs)
    assert fs.files["tokenizer.json"].blob_id is not None  # small files keep their git blob id
    single = LocalFileSet(repo / specs[0])  # one spec as a single-file model
    assert list(single.files) == [specs[0].removesuffix(".virtual.json")]


def test_local_file_set_real_files_win_and_bad_specs_are_named(tmp_path: Path) -> None:
    repo = tmp_path / "m"
    repo.mkdir()
    (repo / "x.gguf").write_bytes(b"GGUF")
    (repo / "x.gguf.virtual.json").write_text(json.dumps(SPEC))
    fs = LocalFileSet(repo)
    assert fs.files["x.gguf"].size == 4
    assert fs.open("x.gguf").read(0, 4) == b"GGUF"
    (repo / "y.gguf.virtual.json").write_text(json.dumps({**SPEC, "file_type": "nope"}))
    with pytest.raises(FormatError, match=r"y\.gguf\.virtual\.json"):
        LocalFileSet(repo)
