"""The virtual GPTQ kind against the safetensors library, our GPTQ reader, and the quantisation bound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import HfApi
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.formats.quantconfig import QuantConfig
from monitor.localhub import LocalHub
from monitor.localhub.virtual import VirtualFile, materialize
from monitor.localhub.virtual_gptq import (
    VirtualGPTQ,
    gptq_quantize,
    gptq_tensors,
    quantize_config_json,
    write_virtual_gptq,
)
from monitor.localhub.virtual_llama import (
    LLAMA_7B,
    LlamaShape,
    llama_config,
    llama_tensor_specs,
    write_virtual_llama,
)
from monitor.remote.source import LocalFileSet

SHAPE = LlamaShape(d_model=256, n_layers=2, d_ff=512, n_heads=4, n_kv_heads=2, vocab=1024)
DERIVATION = {"base_seed": 3, "noise_seed": 4, "rel_noise": 0.1}
SPEC: dict[str, Any] = {"kind": "gptq", "model": SHAPE.to_spec(), "derivation": DERIVATION}


@pytest.fixture(scope="module", params=[True, False], ids=["sym", "asym"])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[VirtualGPTQ, Path]:
    vq = VirtualFile.from_spec({**SPEC, "sym": request.param})
    assert isinstance(vq, VirtualGPTQ)
    path = tmp_path_factory.mktemp("q") / "model.safetensors"
    assert materialize(vq, path) == vq.size
    return vq, path


@pytest.fixture(scope="module")
def base_weights() -> VirtualFile:
    return VirtualFile.from_spec(
        {"kind": "safetensors", "derivation": DERIVATION, "tensors": llama_tensor_specs(SHAPE)}
    )


def test_file_is_what_the_safetensors_library_writes(case: tuple[VirtualGPTQ, Path], tmp_path: Path) -> None:
    vq, path = case
    tensors = load_file(path)
    save_file(tensors, tmp_path / "again.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    p = "model.layers.1.mlp.down_proj"
    assert tensors[f"{p}.qweight"].shape == (512 // 8, 256)
    assert tensors[f"{p}.qzeros"].shape == (4, 256 // 8)
    assert (tensors[f"{p}.scales"].shape, tensors[f"{p}.scales"].dtype) == ((4, 256), np.float16)
    np.testing.assert_array_equal(tensors[f"{p}.g_idx"], np.arange(512) // 128)
    assert tensors["model.embed_tokens.weight"].dtype == np.float16
    assert "lm_head.weight" in tensors
    if vq.sym:  # zero 8, stored minus one in every nibble
        assert set(tensors[f"{p}.qzeros"].view(np.uint32).ravel().tolist()) == {0x77777777}


def test_dequantised_values_are_within_half_a_step(case: tuple[VirtualGPTQ, Path], base_weights: Any) -> None:
    _vq, path = case
    tensors = load_file(path)
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"):
        w = base_weights.tensor(f"{name}.weight")  # (out, in)
        qw = tensors[f"{name}.qweight"].view(np.uint32)
        q = ((qw[:, None, :] >> (np.arange(8, dtype=np.uint32) * 4)[None, :, None]) & 0xF).reshape(
            -1, w.shape[0]
        )
        z = (
            tensors[f"{name}.qzeros"].view(np.uint32)[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)
        ) & 0xF
        z = z.reshape(z.shape[0], -1).astype(np.float32) + 1
        scales = tensors[f"{name}.scales"].astype(np.float32)
        g = np.arange(w.shape[1]) // 128
        deq = ((q.astype(np.float32) - z[g]) * scales[g]).T
        # half a step, plus what storing the scale in float16 moves the grid's ends (7.5 steps x 2^-11)
        assert np.all(np.abs(deq - w) <= scales[g].T * (0.5 + 7.5 * 2.0**-11) + 1e-7)
        assert 0.05 < np.sqrt(np.mean((deq - w) ** 2)) / w.std() < 0.15
    # and the same through our reader: down columns (MLP units) are the cheap direction
    view = ModelView.open(LocalFileSet(path))
    assert view.arch.quantization == "gptq:4bit-g128"
    units = view.read_cols("layers.1.mlp.down", range(130, 194))
    w = base_weights.tensor("model.layers.1.mlp.down_proj.weight")[:, 130:194].T
    assert np.sqrt(np.mean((units - w) ** 2)) / w.std() < 0.15


@pytest.fixture(scope="module")
def raw(case: tuple[VirtualGPTQ, Path]) -> bytes:
    return case[1].read_bytes()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_range_equals_materialized_bytes(
    data: st.DataObject, case: tuple[VirtualGPTQ, Path], raw: bytes
) -> None:
    vq = case[0]
    start = data.draw(st.integers(0, vq.size))
    end = data.draw(st.integers(start, min(vq.size, start + data.draw(st.sampled_from([16, 3000, 400_000])))))
    assert vq.read(start, end) == raw[start:end]


def test_gptq_tensors_of_real_weights_match_the_virtual_layer(
    case: tuple[VirtualGPTQ, Path], tmp_path: Path
) -> None:
    vq, path = case
    name = "model.layers.0.mlp.up_proj"
    w = vq.weight_columns(f"{name}.weight", 0, 256)
    stored = load_file(path)
    tensors = gptq_tensors(name, w, sym=vq.sym)
    for key, value in tensors.items():
        assert value.flags["C_CONTIGUOUS"], key  # safetensors.numpy writes other layouts wrongly
        np.testing.assert_array_equal(value, stored[key], err_msg=key)
    # written as a real file by the safetensors library and read back by our reader
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = {**llama_config(SHAPE, "F16"), "quantization_config": quantize_config_json(sym=vq.sym)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    up = ModelView.open(LocalFileSet(tmp_path)).read("layers.0.mlp.up")
    assert np.sqrt(np.mean((up - w) ** 2)) / w.std() < 0.15


def test_quantiser_edge_cases() -> None:
    w = np.zeros((8, 128), dtype=np.float32)  # an all-zero group gets scale 2/maxq, as AutoGPTQ does
    q, scales, zeros = gptq_quantize(w)
    assert np.all(q == 8)
    np.testing.assert_allclose(scales.astype(np.float32), 2 / 15, rtol=1e-3)
    assert np.all(zeros == 8)
    positive = np.abs(np.random.default_rng(0).standard_normal((8, 128))).astype(np.float32)
    q, scales, zeros = gptq_quantize(positive, sym=False)
    assert np.all(zeros == 0)  # min 0: stored as 0 - 1, wrapped to the field as AutoGPTQ's packer does
    packed = gptq_tensors("x", positive, sym=False)["x.qzeros"].view(np.uint32)
    assert set(packed.ravel().tolist()) == {0xFFFFFFFF}
    with pytest.raises(ValueError, match="whole groups"):
        gptq_quantize(np.zeros((8, 100), dtype=np.float32))


def test_sharded_repo_with_config_and_shared_tokenizer(tmp_path: Path) -> None:
    repo = tmp_path / "acme" / "m-GPTQ"
    written = write_virtual_gptq(repo, SHAPE, seed=None, derivation=DERIVATION, max_shard_bytes=400_000)
    shards = sorted(p.name for p in written if p.name.endswith(".virtual.json"))
    assert len(shards) > 2
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    whole = VirtualGPTQ(SPEC)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in whole.tensors)
    assert set(index["weight_map"]) == {t.name for t in whole.tensors}
    config = json.loads((repo / "config.json").read_text())
    qc = QuantConfig.from_documents(config=config)
    assert qc is not None
    assert (qc.method, qc.bits, qc.group_size, qc.desc_act, qc.checkpoint_format) == (
        "gptq",
        4,
        128,
        False,
        "gptq",
    )
    write_virtual_llama(tmp_path / "acme" / "m", SHAPE, seed=3)
    assert (repo / "tokenizer.json").read_bytes() == (tmp_path / "acme" / "m" / "tokenizer.json").read_bytes()
    view = ModelView.open(LocalFileSet(repo))
    assert len(view.weight_files) == len(shards)
    single = tmp_path / "single"
    write_virtual_gptq(single, SHAPE, seed=None, derivation=DERIVATION)
    view_single = ModelView.open(LocalFileSet(single))
    for key in ("layers.1.mlp.down", "embed", "layers.0.mlp_norm"):
        np.testing.assert_array_equal(view.read(key), view_single.read(key), err_msg=key)
    with LocalHub(tmp_path) as hub:
        meta = HfApi(endpoint=hub.endpoint).get_safetensors_metadata("acme/m-GPTQ")
        assert meta.sharded
        assert meta.weight_map == index["weight_map"]
        assert meta.parameter_count["I32"] > 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bits": 3}, "bits"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 96}, "whole groups"),
        ({"sym": "yes"}, "sym"),
        ({"tensors": ["nope.weight"]}, "does not have"),
        ({"tensors": []}, "non-empty"),
        ({"extra": True}, "unknown keys"),
        ({"derivation": None}, "seed"),
    ],
)
def test_invalid_specs(change: dict[str, Any], match: str) -> None:
    spec = {k: v for k, v in (SPEC | change).items() if v is not None}
    with pytest.raises(FormatError, match=match):
        VirtualFile.from_spec(spec)


def test_llama_7b_gptq_layout_without_generating_it() -> None:
    vq = VirtualGPTQ({"kind": "gptq", "model": LLAMA_7B.to_spec(), "seed": 1})
    assert 3_800_000_000 < vq.size < 4_000_000_000  # TheBloke's Llama-2-7B-GPTQ: 3.90 GB
    t = vq.tensor_info("model.layers.31.mlp.down_proj.qweight")
    assert t.shape == (11008 // 8, 4096)
    row = vq.read(t.offset + 5 * t.row_bytes, t.offset + 6 * t.row_bytes)  # one packed row: one group
    assert len(row) == 4096 * 4
