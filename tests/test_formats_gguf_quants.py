"""Our K-quant quantisers, validated by decoding with gguf-py and bounding the error."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.quants import Q4_K

from monitor.formats.gguf import open_gguf
from monitor.formats.gguf_quants import quantize, quantize_q4_k, quantize_q5_k, quantize_q6_k
from monitor.remote.source import LocalFileSet

T = GGMLQuantizationType


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    gauss = rng.standard_normal((16, 512)).astype(np.float32) * 0.02
    heavy = (rng.standard_t(3, (8, 512)) * 0.05).astype(np.float32)
    outlier = gauss[:4].copy()
    outlier[:, 17] = 3.0
    return {
        "gaussian": gauss,
        "heavy_tailed": heavy,
        "outlier": outlier,
        "all_negative": -np.abs(gauss[:4]) - 0.1,
        "all_positive": np.abs(gauss[:4]) + 0.1,
        "constant": np.full((2, 256), 0.75, np.float32),
        "zeros": np.zeros((2, 256), np.float32),
        "mixed_scales": np.concatenate([gauss[:2, :256] * 1e-4, gauss[:2, :256] * 10], axis=1),
    }


def _affine_steps(blocks: np.ndarray) -> np.ndarray:
    """Grid step ``d·sc`` of each 32-value sub-block of Q4_K/Q5_K blocks: shape (n, 8)."""
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    sc, _ = Q4_K.get_scale_min(blocks[:, 4:16].copy())
    return d * sc.astype(np.float32)


def _q6_steps(blocks: np.ndarray) -> np.ndarray:
    scales = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
    d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
    return np.abs(d * scales)


@pytest.mark.parametrize("name", list(_inputs()))
@pytest.mark.parametrize(
    ("qtype", "fn", "block_bytes", "values_per_step"),
    [(T.Q4_K, quantize_q4_k, 144, 32), (T.Q5_K, quantize_q5_k, 176, 32), (T.Q6_K, quantize_q6_k, 210, 16)],
    ids=["Q4_K", "Q5_K", "Q6_K"],
)
def test_error_is_within_the_grid_step(name, qtype, fn, block_bytes, values_per_step):
    x = _inputs()[name]
    packed = fn(x)
    assert packed.dtype == np.uint8
    assert packed.shape == (x.shape[0], x.shape[1] // 256 * block_bytes)
    y = gguf.quants.dequantize(packed, qtype)
    assert y.shape == x.shape
    blocks = packed.reshape(-1, block_bytes)
    steps = _q6_steps(blocks) if qtype == T.Q6_K else _affine_steps(blocks)
    err = np.abs(y - x).reshape(-1, 256 // values_per_step, values_per_step)
    # Affine K-quants round to the nearest grid point (half a step); Q6_K may clip the one value
    # that sits on the +32 end of a sub-block (one step).
    slack = 1.0 if qtype == T.Q6_K else 0.5
    bound = steps[..., None] * slack * (1 + 1e-3) + 1e-6 * np.abs(x).max()
    assert np.all(err <= bound)


@pytest.mark.parametrize(
    ("qtype", "reference", "max_ratio"),
    [(T.Q4_K, T.Q4_1, 1.25), (T.Q5_K, T.Q5_1, 1.25), (T.Q6_K, T.Q8_0, 6.0)],
    ids=["Q4_K~Q4_1", "Q5_K~Q5_1", "Q6_K~Q8_0"],
)
def test_rms_error_is_comparable_to_ggufs_own_quantisers(qtype, reference, max_ratio):
    x = _inputs()["gaussian"]
    ours = np.sqrt(np.mean((gguf.quants.dequantize(quantize(x, qtype), qtype) - x) ** 2))
    ref = np.sqrt(np.mean((gguf.quants.dequantize(gguf.quants.quantize(x, reference), reference) - x) ** 2))
    assert ours <= max_ratio * ref
    assert ours / x.std() < {T.Q4_K: 0.09, T.Q5_K: 0.045, T.Q6_K: 0.022}[qtype]


def test_dispatch_uses_gguf_for_types_it_quantises():
    x = _inputs()["gaussian"]
    np.testing.assert_array_equal(quantize(x, "Q8_0"), gguf.quants.quantize(x, T.Q8_0))
    np.testing.assert_array_equal(quantize(x, T.Q4_K), quantize_q4_k(x))
    with pytest.raises(NotImplementedError):
        quantize(x, T.Q3_K)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="finite"):
        quantize_q6_k(np.full((1, 256), np.nan, np.float32))


def test_k_quant_gguf_written_with_the_real_writer_reads_back(tmp_path):
    x = _inputs()["heavy_tailed"]
    w = gguf.GGUFWriter(tmp_path / "k.gguf", "llama")
    for qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        w.add_tensor(qtype.name, quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fs = LocalFileSet(tmp_path / "k.gguf")
    f = open_gguf(fs.open("k.gguf"))
    for qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        assert f.tensors[qtype.name].dtype == qtype.name
        assert f.tensors[qtype.name].shape == x.shape
        expected = gguf.quants.dequantize(quantize(x, qtype), qtype)
        np.testing.assert_array_equal(f.read_rows(qtype.name, [7, 2]), expected[[7, 2]])
