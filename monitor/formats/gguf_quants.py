"""Vectorised quantisers for the GGML K-quants Q4_K, Q5_K and Q6_K.

gguf-py can dequantise K-quants but its ``quantize`` raises `NotImplementedError` for them, and the
tests, the demo and the virtual-file benchmark need to *write* the quantisations people actually
upload (Q4_K_M files are mostly Q4_K with Q6_K for some tensors). The byte layouts below are the
ones `gguf.quants` decodes (and ggml's ``block_q4_K``/``block_q5_K``/``block_q6_K``):

* Q4_K (144 B per 256 values): ``f16 d | f16 dmin | 12 B six-bit scales and mins of 8 sub-blocks
  of 32 | 128 B of 4-bit values``; value = ``d·sc_j·q − dmin·m_j``, q ∈ [0, 15].
* Q5_K (176 B): as Q4_K plus ``32 B`` holding the fifth bit of every value; q ∈ [0, 31].
* Q6_K (210 B): ``128 B low nibbles | 64 B high two bits | 16 int8 scales of sub-blocks of 16 |
  f16 d``; value = ``d·sc_j·(q − 32)``, q − 32 ∈ [−32, 31].

The choice of scales is simpler than llama.cpp's iterative search (``make_qkx2_quants``): per
sub-block min/max (affine) or signed absolute maximum (Q6_K), with the six/eight-bit scales
rounded *up* so every value lies on the grid's range. The error is therefore at most half a grid
step per value (one step for the single Q6_K value that may sit on the clipped +32 end), which
the tests verify by decoding with gguf. Measured RMS error on Gaussian weights, as a fraction of
their standard deviation: Q4_K 8.1% (gguf-py's Q4_1: 7.9%), Q5_K 3.9% (Q5_1: 3.8%), Q6_K 1.9%.
llama.cpp's search-based quantisers do somewhat better; files written here are test and benchmark
material, not a replacement for ``llama-quantize``.
"""

from __future__ import annotations

import numpy as np
from gguf import quants as gguf_quants
from gguf.constants import GGMLQuantizationType

__all__ = ["K_QUANTIZERS", "QK_K", "quantize", "quantize_q4_k", "quantize_q5_k", "quantize_q6_k"]

QK_K = 256
"""Values per K-quant super-block."""


def _blocks(data: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[-1] % QK_K:
        raise ValueError(f"K-quant rows must be a multiple of {QK_K} values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("K-quant input must be finite")
    return arr.reshape(-1, QK_K), arr.shape


def _f16_at_least(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x (x >= 0), so scales derived from it never fall short of the range."""
    h = x.astype(np.float16)
    short = h.astype(np.float32) < x
    h[short] = np.nextafter(h[short], np.float16(np.inf))
    if not np.all(np.isfinite(h)):
        raise ValueError("K-quant input exceeds the float16 scale range")
    return h


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def _affine(blocks: np.ndarray, *, levels: int) -> tuple[np.ndarray, ...]:
    """Shared Q4_K/Q5_K step: 8 sub-blocks of 32 with 6-bit scales and mins."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 8, 32)
    mins = -np.minimum(x.min(axis=-1), 0.0)
    dmin = _f16_at_least(mins.max(axis=-1) / 63.0)
    mq = np.clip(np.ceil(_safe_div(mins, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    m_eff = dmin.astype(np.float32)[:, None] * mq
    step_ideal = (x.max(axis=-1) + m_eff) / levels
    d = _f16_at_least(step_ideal.max(axis=-1) / 63.0)
    sc = np.clip(np.ceil(_safe_div(step_ideal, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    step = d.astype(np.float32)[:, None] * sc
    q = np.rint(_safe_div(x + m_eff[..., None], step[..., None]))
    q = np.clip(q, 0, levels).astype(np.uint8)
    return d, dmin, sc, mq, q


def _pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    # q: (n, 8, 32) in [0, 15]; byte c*32+l holds sub-block 2c (low) and 2c+1 (high).
    low = q[:, 0::2, :] & 0x0F
    high = q[:, 1::2, :] & 0x0F
    return (low | (high << 4)).reshape(q.shape[0], 128)


def quantize_q4_k(data: np.ndarray) -> np.ndarray:
    """Quantise to Q4_K; returns uint8 of shape ``(*shape[:-1], shape[-1] // 256 * 144)``."""
    blocks, shape = _blocks(data)
    d, dmin, sc, mq, q = _affine(blocks, levels=15)
    out = np.concatenate(
        [
            d.reshape(-1, 1).view(np.uint8),
            dmin.reshape(-1, 1).view(np.uint8),
            _pack_scales(sc, mq),
            _pack_nibbles(q),
        ],
        axis=1,
    )
    return out.reshape(*shape[:-1], shape[-1] // QK_K * 144)


def quantize_q5_k(data: np.ndarray) -> np.ndarray:
    """Quantise to Q5_K; returns uint8 of shape ``(*shape[:-1], shape[-1] // 256 * 176)``."""
    blocks, shape = _blocks(data)
    d, dmin, sc, mq, q = _affine(blocks, levels=31)
    bits = ((q >> 4) & 1).astype(np.uint8)  # (n, 8, 32): fifth bit of sub-block j, element l
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for j in range(8):
        qh |= bits[:, j, :] << j
    out = np.concatenate(
        [
            d.reshape(-1, 1).view(np.uint8),
            dmin.reshape(-1, 1).view(np.uint8),
            _pack_scales(sc, mq),
            qh,
            _pack_nibbles(q & 0x0F),
        ],
        axis=1,
    )
    return out.reshape(*shape[:-1], shape[-1] // QK_K * 176)


def quantize_q6_k(data: np.ndarray) -> np.ndarray:
    """Quantise to Q6_K; returns uint8 of shape ``(*shape[:-1], shape[-1] // 256 * 210)``."""
    blocks, shape = _blocks(data)
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    pick = np.abs(x).argmax(axis=-1)
    extreme = np.take_along_axis(x, pick[..., None], axis=-1)[..., 0]
    step_ideal = -extreme / 32.0  # the extreme value lands exactly on q = -32
    d = _f16_at_least(np.abs(step_ideal).max(axis=-1) / 127.0)
    mag = np.clip(np.ceil(_safe_div(np.abs(step_ideal), d.astype(np.float32)[:, None])), 0, 127)
    sc = (np.sign(step_ideal) * mag).astype(np.int8)
    step = d.astype(np.float32)[:, None] * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] != 0, np.rint(x / np.where(step == 0, 1, step)[..., None]), 0)
    q6 = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    low, high = q6 & 0x0F, q6 >> 4
    ql = (low[:, :, 0:64] | (low[:, :, 64:128] << 4)).reshape(n, 128)
    hq = high.reshape(n, 2, 4, 32)
    qh = (hq[:, :, 0] | (hq[:, :, 1] << 2) | (hq[:, :, 2] << 4) | (hq[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1)
    return out.reshape(*shape[:-1], shape[-1] // QK_K * 210)


K_QUANTIZERS = {
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
}
"""Our quantisers by GGML type."""


def quantize(data: np.ndarray, qtype: GGMLQuantizationType | str) -> np.ndarray:
    """Quantise with ours for K-quants and gguf-py's for the rest (F32/F16/BF16/Q4_0/Q8_0...).

    Returns the array to hand to ``GGUFWriter.add_tensor(name, arr, raw_dtype=qtype)``.

    Raises:
        `ValueError`: rows are not whole blocks, or values are not finite.
        `NotImplementedError`: neither gguf-py nor this module quantises ``qtype``.
    """
    qt = GGMLQuantizationType[qtype] if isinstance(qtype, str) else GGMLQuantizationType(qtype)
    fn = K_QUANTIZERS.get(qt)
    if fn is not None:
        return fn(data)
    return gguf_quants.quantize(np.asarray(data, dtype=np.float32), qt)
