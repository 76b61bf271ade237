"""Storage types: how many bytes a run of elements takes and how to turn those bytes into float32.

One table serves every format: safetensors dtype names (``F32``, ``BF16``, ``F8_E4M3``...), the
same names for PyTorch zip storages, and GGML type names for GGUF (``Q4_K``, ``Q8_0``...). A
`Codec` describes a *block*: dense types are blocks of one element; GGML quantisations are blocks of
32 or 256 elements. Rows of every layout we read are whole blocks, which is what makes row reads
cheap.

numpy has no 8-bit floats, so F8_E4M3 (``e4m3fn``: no infinities, one NaN pattern), F8_E5M2 (IEEE-like)
and F8_E8M0 (power-of-two scales of the MX formats) decode through 256-entry lookup tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from monitor.errors import FormatError, UnsupportedFormat

__all__ = [
    "DENSE_DTYPES",
    "F8_E4M3_TABLE",
    "F8_E5M2_TABLE",
    "F8_E8M0_TABLE",
    "GGML_TYPE_NAMES",
    "Codec",
    "codec_for",
]


def _e4m3fn_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0x0F
    man = (codes & 0x07).astype(np.float64)
    normal = (1.0 + man / 8.0) * np.exp2(exp - 7.0)
    subnormal = (man / 8.0) * 2.0**-6
    value = sign * np.where(exp == 0, subnormal, normal)
    value[(exp == 0x0F) & ((codes & 0x07) == 0x07)] = np.nan
    return value.astype(np.float32)


def _e5m2_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 2) & 0x1F
    man = (codes & 0x03).astype(np.float64)
    with np.errstate(over="ignore"):
        normal = (1.0 + man / 4.0) * np.exp2(exp - 15.0)
    subnormal = (man / 4.0) * 2.0**-14
    value = sign * np.where(exp == 0, subnormal, normal)
    value[exp == 0x1F] = np.where(man[exp == 0x1F] == 0, sign[exp == 0x1F] * np.inf, np.nan)
    return value.astype(np.float32)


def _e8m0_table() -> np.ndarray:
    value = np.exp2(np.arange(256, dtype=np.float64) - 127.0)
    value[255] = np.nan
    return value.astype(np.float32)


F8_E4M3_TABLE = _e4m3fn_table()
"""float32 value of each F8_E4M3 (``float8_e4m3fn``) byte."""
F8_E5M2_TABLE = _e5m2_table()
"""float32 value of each F8_E5M2 byte."""
F8_E8M0_TABLE = _e8m0_table()
"""float32 value of each F8_E8M0 (unsigned power-of-two scale) byte."""

DENSE_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
    "F8_E8M0": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}
"""Element-wise types by safetensors name, with the little-endian numpy layout of their bytes."""

_LOOKUP: dict[str, np.ndarray] = {
    "F8_E4M3": F8_E4M3_TABLE,
    "F8_E5M2": F8_E5M2_TABLE,
    "F8_E8M0": F8_E8M0_TABLE,
}

GGML_TYPE_NAMES: dict[int, str] = {int(t): t.name for t in GGMLQuantizationType}
"""GGML type id -> name, for every type gguf-py knows."""

# GGML types that are plain element types and decode like their safetensors namesakes.
_GGML_DENSE = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}


@dataclass(frozen=True)
class Codec:
    """How one storage type lays out elements.

    Attributes:
        name (`str`): type name (``F16``, ``Q4_K``...).
        block_elems (`int`): elements per block (1 for dense types).
        block_bytes (`int`): bytes per block.
        numpy (`np.dtype | None`): little-endian numpy layout of one element for dense types;
            ``None`` for block-quantised GGML types.
        ggml (`GGMLQuantizationType | None`): the GGML type for block-quantised types.
    """

    name: str
    block_elems: int
    block_bytes: int
    numpy: np.dtype | None = None
    ggml: GGMLQuantizationType | None = None

    @property
    def dense(self) -> bool:
        return self.numpy is not None

    def nbytes(self, n_elems: int) -> int:
        """Bytes of ``n_elems`` elements; ``n_elems`` must be a whole number of blocks."""
        return n_elems // self.block_elems * self.block_bytes

    def native(self, buf: bytes | memoryview | np.ndarray) -> np.ndarray:
        """The elements in their own integer/float type (dense types only; for packed integers)."""
        if self.numpy is None:
            raise UnsupportedFormat(f"{self.name} has no element-wise native form")
        arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
        return arr.view(self.numpy).copy()  # aligned and writable, not a view of the read buffer

    def to_float32(self, buf: bytes | memoryview | np.ndarray) -> np.ndarray:
        """Decode whole blocks to a flat float32 array (NaN/inf are kept as stored)."""
        raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
        if raw.size % self.block_bytes:
            raise FormatError(f"{self.name}: {raw.size} bytes is not a whole number of blocks")
        if raw.size == 0:
            return np.zeros(0, dtype=np.float32)
        with np.errstate(all="ignore"):
            if self.numpy is not None:
                lookup = _LOOKUP.get(self.name)
                if lookup is not None:
                    return lookup[raw]
                if self.name == "BF16":
                    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
                return raw.view(self.numpy).astype(np.float32)
            assert self.ggml is not None
            from gguf import quants  # deferred: gguf.quants builds lookup grids at import

            try:
                out = quants.dequantize(raw.reshape(1, -1), self.ggml)
            except NotImplementedError:
                raise UnsupportedFormat(f"GGML type {self.name} cannot be dequantised by gguf") from None
            return np.asarray(out, dtype=np.float32).reshape(-1)


def _build_codecs() -> dict[str, Codec]:
    codecs: dict[str, Codec] = {
        name: Codec(name, 1, dt.itemsize, numpy=dt) for name, dt in DENSE_DTYPES.items()
    }
    for qtype, (block_elems, block_bytes) in GGML_QUANT_SIZES.items():
        if qtype.name in _GGML_DENSE:
            continue
        codecs[qtype.name] = Codec(qtype.name, block_elems, block_bytes, ggml=qtype)
    return codecs


_CODECS = _build_codecs()


def codec_for(dtype: str, *, where: str = "") -> Codec:
    """The codec of a storage type name.

    Raises:
        `FormatError`: the name is not a known type (``where`` prefixes the message).
    """
    codec = _CODECS.get(dtype)
    if codec is None:
        raise FormatError(f"{where}unknown dtype {dtype[:40]!r}")
    return codec
