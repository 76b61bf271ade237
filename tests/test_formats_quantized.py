"""GPTQ, AWQ and bitsandbytes checkpoints packed by the published layouts, read through ModelView."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.formats.quantconfig import QuantConfig
from monitor.formats.quantized import AWQ_ORDER
from monitor.remote.source import LocalFileSet

D, FF, LAYERS, HEADS, VOCAB = 64, 128, 2, 4, 96
LINEARS = {
    "self_attn.q_proj": (D, D),
    "self_attn.k_proj": (D, D),
    "self_attn.v_proj": (D, D),
    "self_attn.o_proj": (D, D),
    "mlp.gate_proj": (FF, D),
    "mlp.up_proj": (FF, D),
    "mlp.down_proj": (D, FF),
}
CANON = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
}
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)


def _pack_rows(vals: np.ndarray, bits: int) -> np.ndarray:
    per = 32 // bits
    v = vals.astype(np.uint32).reshape(-1, per, vals.shape[1])
    return sum(v[:, j, :] << np.uint32(bits * j) for j in range(per)).astype(np.uint32).view(np.int32)


def _pack_cols(vals: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    per = 32 // bits
    v = vals.astype(np.uint32).reshape(vals.shape[0], -1, per)
    order = order or tuple(range(per))
    return sum(v[:, :, order[j]] << np.uint32(bits * j) for j in range(per)).astype(np.uint32).view(np.int32)


def gptq(
    W: np.ndarray,
    *,
    bits: int = 4,
    gs: int = 32,
    sym: bool = False,
    act_order: bool = False,
    v1: bool = True,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pack like AutoGPTQ's QuantLinear.pack; return tensors and the exact dequantised weight."""
    out, n_in = W.shape
    maxq = (1 << bits) - 1
    if act_order:
        perm = np.random.default_rng(seed).permutation(n_in)
        g_idx = (np.argsort(perm) // gs).astype(np.int32)
    else:
        g_idx = (np.arange(n_in) // gs).astype(np.int32)
    groups = int(g_idx.max()) + 1
    scales = np.zeros((groups, out), np.float32)
    zeros = np.zeros((groups, out), np.int64)
    for g in range(groups):
        cols = W[:, g_idx == g]
        lo, hi = np.minimum(cols.min(1), 0), np.maximum(cols.max(1), 0)
        if sym:
            scales[g] = np.maximum(np.abs(lo), hi) * 2 / maxq
            zeros[g] = (maxq + 1) // 2
        else:
            scales[g] = (hi - lo) / maxq
            zeros[g] = np.clip(np.round(-lo / scales[g]), 1, maxq)
    scales = scales.astype(np.float16).astype(np.float32)
    q = np.clip(np.round(W / scales[g_idx].T) + zeros[g_idx].T, 0, maxq).astype(np.int64)  # (out, in)
    deq = scales[g_idx].T * (q - zeros[g_idx].T)
    stored_zeros = (zeros - 1) & maxq if v1 else zeros
    tensors = {
        "qweight": _pack_rows(q.T, bits),
        "qzeros": _pack_cols(stored_zeros, bits),
        "scales": scales.astype(np.float16),
        "g_idx": g_idx,
    }
    return tensors, deq.astype(np.float32)


def awq(W: np.ndarray, *, gs: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pack like AutoAWQ's WQLinear_GEMM.from_linear (4-bit, interleaved order)."""
    out, n_in = W.shape
    wt = W.T.reshape(n_in // gs, gs, out)
    lo, hi = wt.min(1), wt.max(1)
    scales = ((hi - lo) / 15).astype(np.float16).astype(np.float32)
    zeros = np.clip(np.round(-lo / scales), 0, 15)
    g = np.arange(n_in) // gs
    q = np.clip(np.round(W.T / scales[g]) + zeros[g], 0, 15)  # (in, out)
    deq = ((q - zeros[g]) * scales[g]).T
    tensors = {
        "qweight": _pack_cols(q, 4, AWQ_ORDER),
        "qzeros": _pack_cols(zeros, 4, AWQ_ORDER),
        "scales": scales.astype(np.float16),
    }
    return tensors, deq.astype(np.float32)


def bnb_int8(W: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    scb = np.abs(W).max(1).astype(np.float32)
    cb = np.round(W * 127 / scb[:, None]).astype(np.int8)
    return {"weight": cb, "SCB": scb}, cb.astype(np.float32) * (scb / 127)[:, None]


def bnb_nf4(
    W: np.ndarray, *, nested: bool, bs: int = 64, nbs: int = 256
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    flat = W.reshape(-1)
    blocks = flat.reshape(-1, bs)
    absmax = np.abs(blocks).max(1).astype(np.float32)
    idx = np.abs(blocks[:, :, None] / absmax[:, None, None] - NF4[None, None, :]).argmin(-1).reshape(-1)
    packed = ((idx[0::2] << 4) | idx[1::2]).astype(np.uint8).reshape(-1, 1)
    state = {"quant_type": "nf4", "blocksize": bs, "dtype": "float16", "shape": list(W.shape)}
    tensors = {"weight": packed, "weight.quant_map": NF4}
    if nested:
        code = np.linspace(-1, 1, 256).astype(np.float32)
        offset = float(absmax.mean())
        n_abs = absmax.size
        centred = np.zeros(-(-n_abs // nbs) * nbs, np.float32)  # the last nested block may be partial
        centred[:n_abs] = absmax - offset
        centred = centred.reshape(-1, nbs)
        nmax = np.abs(centred).max(1).astype(np.float32)
        qa = (
            np.abs(centred[:, :, None] / nmax[:, None, None] - code[None, None, :])
            .argmin(-1)
            .astype(np.uint8)
        )
        absmax = ((code[qa] * nmax[:, None]).reshape(-1) + offset)[:n_abs]
        tensors |= {
            "weight.absmax": qa.reshape(-1)[:n_abs],
            "weight.nested_absmax": nmax,
            "weight.nested_quant_map": code,
        }
        state |= {"nested_blocksize": nbs, "nested_dtype": "float32", "nested_offset": offset}
    else:
        tensors["weight.absmax"] = absmax
    tensors["weight.quant_state.bitsandbytes__nf4"] = np.frombuffer(
        json.dumps(state).encode(), np.uint8
    ).copy()
    deq = (NF4[idx] * np.repeat(absmax.astype(np.float32), bs)).reshape(W.shape)
    return tensors, deq


def _model(
    tmp_path: Path, scheme, *, config: dict | None = None, files: dict[str, dict] | None = None, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.standard_normal((VOCAB, D)).astype(np.float16),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(D)).astype(np.float16),
        "lm_head.weight": rng.standard_normal((VOCAB, D)).astype(np.float16),
    }
    originals, deqs = {}, {}
    for i in range(LAYERS):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(D, np.float16)
        tensors[f"model.layers.{i}.post_attention_layernorm.weight"] = np.ones(D, np.float16)
        for mod, shape in LINEARS.items():
            W = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            packed, deq = scheme(W)
            for k, v in packed.items():
                tensors[f"model.layers.{i}.{mod}.{k}"] = v
            key = f"layers.{i}.{CANON[mod]}"
            originals[key], deqs[key] = W, deq
    root = tmp_path / "model"
    root.mkdir(parents=True)
    # safetensors.numpy writes an array's memory as is: make every array C-ordered first
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, root / "model.safetensors")
    cfg = {
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
    } | (config or {})
    (root / "config.json").write_text(json.dumps(cfg))
    for name, doc in (files or {}).items():
        (root / name).write_text(json.dumps(doc))
    return root, originals, deqs


SCHEMES = {
    "gptq-asym-v1": (
        lambda W: gptq(W),
        {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False}},
        "gptq:4bit-g32",
    ),
    "gptq-sym-act-order": (
        lambda W: gptq(W, sym=True, act_order=True),
        {
            "quantization_config": {
                "quant_method": "gptq",
                "bits": 4,
                "group_size": 32,
                "desc_act": True,
                "sym": True,
            }
        },
        "gptq:4bit-g32",
    ),
    "gptq-v2-8bit": (
        lambda W: gptq(W, bits=8, v1=False),
        {
            "quantization_config": {
                "quant_method": "gptq",
                "bits": 8,
                "group_size": 32,
                "checkpoint_format": "gptq_v2",
            }
        },
        "gptq:8bit-g32",
    ),
    "gptq-2bit-no-config": (lambda W: gptq(W, bits=2), None, "gptq:2bit-g32"),
    "awq": (
        lambda W: awq(W),
        {
            "quantization_config": {
                "quant_method": "awq",
                "bits": 4,
                "group_size": 32,
                "version": "gemm",
                "zero_point": True,
            }
        },
        "awq:4bit-g32",
    ),
    "awq-no-config": (lambda W: awq(W), None, "awq:4bit-g32"),
    "bnb-int8": (
        bnb_int8,
        {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}},
        "bnb:int8",
    ),
    "bnb-nf4": (lambda W: bnb_nf4(W, nested=False), None, "bnb:nf4"),
    "bnb-nf4-nested": (lambda W: bnb_nf4(W, nested=True), None, "bnb:nf4"),
}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_dequantised_reads_match_the_reference(tmp_path, name):
    scheme, config, label = SCHEMES[name]
    root, originals, deqs = _model(tmp_path, scheme, config=config)
    view = ModelView.open(LocalFileSet(root))
    assert view.arch.quantization == label
    assert view.arch.family == "llama"
    assert view.arch.gated_mlp
    assert not view.unsupported
    np.testing.assert_array_equal(view.read("final_norm"), view.read("final_norm"))
    for key, deq in deqs.items():
        assert view.tensors[key].shape == deq.shape
        np.testing.assert_allclose(view.read(key), deq, rtol=1e-6, atol=1e-7)
    up, down = deqs["layers.1.mlp.up"], deqs["layers.1.mlp.down"]
    rows, cols = [0, 5, 6, 127, 40], [3, 64, 65, 127, 9]
    np.testing.assert_allclose(view.read_rows("layers.1.mlp.up", rows), up[rows], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        view.read_cols("layers.1.mlp.down", cols), down[:, cols].T, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        view.read_cols("layers.0.attn.q", [1]), deqs["layers.0.attn.q"][:, [1]].T, rtol=1e-6, atol=1e-7
    )
    # the dequantised weights are the originals up to the quantisation grid
    err = max(float(np.abs(deqs[k] - originals[k]).max()) for k in deqs)
    assert err < 0.25 * max(float(np.abs(originals[k]).max()) for k in deqs)


@pytest.mark.parametrize("name", ["gptq-asym-v1", "awq"])
def test_columns_are_cheap_rows_are_not(tmp_path, name):
    scheme, config, _ = SCHEMES[name]
    root, _, _ = _model(tmp_path, scheme, config=config)
    fs = LocalFileSet(root)
    view = ModelView.open(fs)
    down = view.tensors["layers.0.mlp.down"]
    assert down.cols_contiguous
    assert not down.rows_contiguous
    cols = [64, 65, 66, 67]  # one packed GPTQ row / four AWQ rows, one group
    cost = view.cost("layers.0.mlp.down", cols=cols)
    before = fs.stats.bytes_read
    view.read_cols("layers.0.mlp.down", cols)
    assert fs.stats.bytes_read - before == cost
    assert cost <= 4 * (D * 4) + D * 2 + D // 8 * 4 + 64
    g_idx_bytes = 4 * FF if name.startswith("gptq") else 0  # desc_act=False: g_idx is never read
    assert view.cost("layers.0.mlp.down", rows=[0]) == down.nbytes - g_idx_bytes


def test_act_order_reads_g_idx_first_and_cost_is_an_upper_bound(tmp_path):
    scheme, config, _ = SCHEMES["gptq-sym-act-order"]
    root, _, deqs = _model(tmp_path, scheme, config=config)
    fs = LocalFileSet(root)
    view = ModelView.open(fs)
    before = fs.stats.snapshot()
    cols = [7, 100]
    out = view.read_cols("layers.1.mlp.down", cols)
    np.testing.assert_allclose(out, deqs["layers.1.mlp.down"][:, cols].T, rtol=1e-6)
    spent = fs.stats.bytes_read - before["bytes_read"]
    assert spent <= view.cost("layers.1.mlp.down", cols=cols)
    assert spent < 0.2 * view.tensors["layers.1.mlp.down"].nbytes


def test_legacy_config_files(tmp_path):
    root, _, _ = _model(
        tmp_path,
        lambda W: gptq(W, v1=False),
        files={
            "quantize_config.json": {
                "bits": 4,
                "group_size": 32,
                "desc_act": False,
                "checkpoint_format": "gptq_v2",
            }
        },
    )
    view = ModelView.open(LocalFileSet(root))
    assert view.quant_config == QuantConfig(
        method="gptq",
        bits=4,
        group_size=32,
        desc_act=False,
        checkpoint_format="gptq_v2",
        source="quantize_config.json",
    )
    root2, _, deqs = _model(
        tmp_path / "b",
        lambda W: awq(W),
        files={"quant_config.json": {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}},
    )
    view2 = ModelView.open(LocalFileSet(root2))
    assert view2.quant_config.method == "awq"
    assert view2.quant_config.version == "gemm"
    np.testing.assert_allclose(view2.read("layers.0.attn.o"), deqs["layers.0.attn.o"], rtol=1e-6)


def test_unsupported_layouts_are_listed_not_fatal(tmp_path):
    root, _, _ = _model(
        tmp_path,
        lambda W: awq(W),
        config={
            "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"}
        },
    )
    view = ModelView.open(LocalFileSet(root))
    assert "GEMM only" in view.unsupported["model.layers.0.mlp.up_proj.weight"]
    assert "layers.0.mlp.up" not in view.tensors
    assert "embed" in view.tensors
    assert "layers.0.attn_norm" in view.tensors


def test_inconsistent_groups_are_format_errors(tmp_path):
    def bad_scales(W):
        t, d = gptq(W)
        t["scales"] = t["scales"][:-1]
        return t, d

    root, _, _ = _model(tmp_path, bad_scales)
    with pytest.raises(FormatError, match="qzeros has"):
        ModelView.open(LocalFileSet(root))

    def bad_g_idx(W):
        t, d = gptq(W)
        t["g_idx"] = np.full_like(t["g_idx"], 99)
        return t, d

    root2, _, _ = _model(
        tmp_path / "b",
        bad_g_idx,
        config={
            "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True}
        },
    )
    view = ModelView.open(LocalFileSet(root2))
    with pytest.raises(FormatError, match="g_idx holds groups outside"):
        view.read_cols("layers.0.mlp.down", [0])

    def bad_state(W):
        t, d = bnb_nf4(W, nested=False)
        t["weight.quant_state.bitsandbytes__nf4"] = np.frombuffer(b'{"shape": [3]}', np.uint8).copy()
        return t, d

    root3, _, _ = _model(tmp_path / "c", bad_state)
    with pytest.raises(FormatError, match="2-D 'shape'"):
        ModelView.open(LocalFileSet(root3))


def test_bnb_int8_rows_are_cheap(tmp_path):
    root, _, deqs = _model(tmp_path, bnb_int8)
    fs = LocalFileSet(root)
    view = ModelView.open(fs)
    t = view.tensors["layers.0.mlp.up"]
    assert t.rows_contiguous
    assert not t.cols_contiguous
    assert t.dtype == "bnb-int8"
    before = fs.stats.bytes_read
    np.testing.assert_allclose(
        view.read_rows("layers.0.mlp.up", [3, 4]), deqs["layers.0.mlp.up"][[3, 4]], rtol=1e-6
    )
    assert fs.stats.bytes_read - before == 2 * D + 2 * 4
