"""GGUF v2/v3: our own header parser over range reads, and dequantisation of just the rows read.

``gguf.GGUFReader`` memory-maps whole files, which is impossible for a remote file. Layout::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv × (string key | u32 value type | value)
    n_tensors × (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
    padding to general.alignment (default 32) | tensor data

Strings are ``u64 length | UTF-8 bytes``; arrays are ``u32 element type | u64 count | elements``.
The tensor index comes after *all* key/values, including tokenizer arrays of 5–16 MB for large
vocabularies, so the parser reads `PREFETCH_BYTES` and, whenever it runs off the end, doubles the
prefix (never past `MAX_HEADER_BYTES`) and starts again; only the final prefix is ever read.

Key/values are kept except large arrays nobody needs: ``tokenizer.ggml.tokens`` is kept as
``list[str]``; merges, scores and token types become `GGUFArraySummary` (type and length only).
Shapes are reported in numpy order (GGML ``ne`` reversed), so rows are contiguous runs of blocks
and `gguf.quants.dequantize` decodes just them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.base import TensorInfo
from monitor.formats.rows import RowFile
from monitor.remote.source import ByteSource

__all__ = [
    "KEEP_ARRAY_MAX",
    "MAX_ARRAY_LEN",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_KV",
    "MAX_NAME_BYTES",
    "MAX_STRING_BYTES",
    "MAX_TENSORS",
    "PREFETCH_BYTES",
    "GGUFArraySummary",
    "GGUFFile",
    "open_gguf",
]

PREFETCH_BYTES = 2 * 1024 * 1024
"""First read; the prefix doubles from here while the parser needs more."""
MAX_HEADER_BYTES = 64 * 1024 * 1024
"""Largest header (key/values + tensor index) read; GPT-OSS-20B's is under 16 MiB."""
MAX_KV = 65_536
"""Most key/value pairs (real files: 20–60)."""
MAX_TENSORS = 1_000_000
"""Most tensors in one file (a 64 MiB index cannot describe many more)."""
MAX_STRING_BYTES = 16 * 1024 * 1024
"""Longest string value (chat templates reach tens of KB)."""
MAX_ARRAY_LEN = 1 << 24
"""Longest array (vocabularies and merges stay below 1M)."""
MAX_ARRAY_DEPTH = 3
"""Deepest nesting of arrays of arrays."""
MAX_NAME_BYTES = 1024
"""Longest key or tensor name (llama.cpp itself allows 64-byte tensor names)."""
MAX_DIMS = 4
"""GGML_MAX_DIMS."""
MAX_ALIGNMENT = 1 << 20
"""Largest ``general.alignment`` accepted (must be a power of two)."""
KEEP_ARRAY_MAX = 4096
"""Arrays longer than this are summarised, except the token list."""
_KEEP_ALWAYS = frozenset({"tokenizer.ggml.tokens"})
_MAX_ELEMS = 1 << 56

_SCALARS: dict[int, tuple[str, np.dtype]] = {
    0: ("UINT8", np.dtype("u1")),
    1: ("INT8", np.dtype("i1")),
    2: ("UINT16", np.dtype("<u2")),
    3: ("INT16", np.dtype("<i2")),
    4: ("UINT32", np.dtype("<u4")),
    5: ("INT32", np.dtype("<i4")),
    6: ("FLOAT32", np.dtype("<f4")),
    7: ("BOOL", np.dtype("u1")),
    10: ("UINT64", np.dtype("<u8")),
    11: ("INT64", np.dtype("<i8")),
    12: ("FLOAT64", np.dtype("<f8")),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFArraySummary:
    """Stands in for a large array value that was skipped, not kept.

    Attributes:
        element_type (`str`): GGUF value type of the elements (``STRING``, ``FLOAT32``...).
        length (`int`): number of elements.
    """

    element_type: str
    length: int


class _NeedMore(Exception):
    def __init__(self, end: int) -> None:
        self.end = end


class _Cursor:
    """Bounds-checked little-endian reads over the header prefix read so far."""

    def __init__(self, buf: bytes | bytearray, *, path: str, file_size: int, limit: int) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.path = path
        self.file_size = file_size
        self.limit = limit

    def need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > len(self.buf):
            if end > self.file_size:
                raise FormatError(
                    f"{self.path}: {what} at byte {self.pos} runs past the end of the "
                    f"{self.file_size}-byte file (truncated or corrupt)"
                )
            if end > self.limit:
                raise FormatError(
                    f"{self.path}: GGUF header is larger than the {self.limit}-byte limit "
                    f"({what} at byte {self.pos})"
                )
            raise _NeedMore(end)

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return int(v)

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def string(self, what: str, *, limit: int = MAX_STRING_BYTES, strict: bool = False) -> str:
        n = self.u64(f"{what} length")
        if n > limit:
            raise FormatError(f"{self.path}: {what} of {n} bytes exceeds the limit of {limit}")
        data = self.raw(n, what)
        try:
            return data.decode("utf-8", errors="strict" if strict else "replace")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} is not valid UTF-8") from None


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> object:
    if vtype in _SCALARS:
        name, dt = _SCALARS[vtype]
        cur.need(dt.itemsize, f"value of {key!r}")
        value = np.frombuffer(cur.buf, dtype=dt, count=1, offset=cur.pos)[0]
        cur.pos += dt.itemsize
        return bool(value) if name == "BOOL" else value.item()
    if vtype == _STRING:
        return cur.string(f"value of {key!r}")
    if vtype == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise FormatError(f"{cur.path}: {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        etype = cur.u32(f"element type of {key!r}")
        count = cur.u64(f"length of {key!r}")
        if count > MAX_ARRAY_LEN:
            raise FormatError(f"{cur.path}: {key!r}: array of {count} elements exceeds {MAX_ARRAY_LEN}")
        keep = count <= KEEP_ARRAY_MAX or key in _KEEP_ALWAYS
        if etype in _SCALARS:
            name, dt = _SCALARS[etype]
            cur.need(count * dt.itemsize, f"array {key!r}")
            start = cur.pos
            cur.pos += count * dt.itemsize
            if not keep:
                return GGUFArraySummary(name, count)
            values = np.frombuffer(cur.buf, dtype=dt, count=count, offset=start)
            return [bool(v) for v in values] if name == "BOOL" else values.tolist()
        if etype == _STRING:
            # Each string needs at least its 8-byte length: reject impossible counts up front.
            if cur.pos + 8 * count > cur.file_size:
                raise FormatError(f"{cur.path}: {key!r}: {count} strings cannot fit in the file")
            out: list[str] = []
            for i in range(count):
                n = cur.u64(f"length of {key!r}[{i}]")
                if n > MAX_STRING_BYTES:
                    raise FormatError(f"{cur.path}: {key!r}[{i}] of {n} bytes exceeds the limit")
                cur.need(n, f"{key!r}[{i}]")
                if keep:
                    out.append(bytes(cur.buf[cur.pos : cur.pos + n]).decode("utf-8", errors="replace"))
                cur.pos += n
            return out if keep else GGUFArraySummary("STRING", count)
        if etype == _ARRAY:
            items = [_read_value(cur, _ARRAY, key, depth + 1) for _ in range(count)]
            return items if keep else GGUFArraySummary("ARRAY", count)
        raise FormatError(f"{cur.path}: {key!r}: unknown array element type {etype}")
    raise FormatError(f"{cur.path}: {key!r}: unknown value type {vtype}")


@dataclass(frozen=True)
class _Header:
    version: int
    metadata: dict[str, object]
    raw_infos: list[tuple[str, tuple[int, ...], int, int]]
    index_end: int


def _parse_header(buf: bytes | bytearray, *, path: str, file_size: int, limit: int) -> _Header:
    cur = _Cursor(buf, path=path, file_size=file_size, limit=limit)
    magic = cur.raw(4, "magic")
    if magic != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic {magic!r})")
    version = cur.u32("version")
    if version not in (2, 3):
        if version in (2 << 24, 3 << 24):
            raise UnsupportedFormat(f"{path}: big-endian GGUF is not read")
        if version == 1:
            raise UnsupportedFormat(f"{path}: GGUF v1 (32-bit lengths) is not read; re-convert the file")
        raise FormatError(f"{path}: unknown GGUF version {version}")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    if n_tensors > MAX_TENSORS:
        raise FormatError(f"{path}: {n_tensors} tensors exceed the limit of {MAX_TENSORS}")
    if n_kv > MAX_KV:
        raise FormatError(f"{path}: {n_kv} key/values exceed the limit of {MAX_KV}")
    metadata: dict[str, object] = {}
    for i in range(n_kv):
        key = cur.string(f"key #{i}", limit=MAX_NAME_BYTES, strict=True)
        if key in metadata:
            raise FormatError(f"{path}: duplicate key {key!r}")
        metadata[key] = _read_value(cur, cur.u32(f"type of {key!r}"), key)
    raw_infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}", limit=MAX_NAME_BYTES, strict=True)
        n_dims = cur.u32(f"n_dims of {name!r}")
        if n_dims > MAX_DIMS:
            raise FormatError(f"{path}: tensor {name!r}: {n_dims} dimensions exceed {MAX_DIMS}")
        ne = tuple(cur.u64(f"dimension of {name!r}") for _ in range(n_dims))
        ttype = cur.u32(f"type of {name!r}")
        offset = cur.u64(f"offset of {name!r}")
        raw_infos.append((name, ne, ttype, offset))
    return _Header(version, metadata, raw_infos, cur.pos)


def _alignment(metadata: dict[str, object], path: str) -> int:
    value = metadata.get("general.alignment", 32)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value <= 0
        or value & (value - 1)
        or (value > MAX_ALIGNMENT)
    ):
        raise FormatError(f"{path}: general.alignment {value!r} is not a power of two <= {MAX_ALIGNMENT}")
    return value


def _tensor_infos(header: _Header, *, path: str, file_size: int) -> tuple[dict[str, TensorInfo], int]:
    align = _alignment(header.metadata, path)
    data_start = -(-header.index_end // align) * align
    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, ne, ttype, offset in header.raw_infos:
        where = f"{path}: tensor {name!r}"
        if name in tensors:
            raise FormatError(f"{where}: duplicate tensor name")
        try:
            qtype = GGMLQuantizationType(ttype)
        except ValueError:
            raise FormatError(f"{where}: unknown GGML type id {ttype}") from None
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        numel = 1
        for d in ne:
            if d > _MAX_ELEMS:  # bounded one by one: a zero dimension makes the product 0 whatever follows
                raise FormatError(f"{where}: dimension {d} exceeds {_MAX_ELEMS}")
            numel *= d
            if numel > _MAX_ELEMS:
                raise FormatError(f"{where}: shape product overflows")
        if ne and ne[0] % block_elems:
            raise FormatError(
                f"{where}: row length {ne[0]} is not a multiple of the {qtype.name} block size {block_elems}"
            )
        if not ne and block_elems != 1:
            raise FormatError(f"{where}: scalar of block type {qtype.name}")
        nbytes = numel // block_elems * block_bytes
        if offset % align:
            raise FormatError(f"{where}: offset {offset} is not aligned to {align}")
        start = data_start + offset
        if start + nbytes > file_size:
            raise FormatError(
                f"{where}: data [{start}, {start + nbytes}) lies outside the "
                f"{file_size}-byte file (truncated?)"
            )
        tensors[name] = TensorInfo(name, qtype.name, tuple(reversed(ne)), path, start, nbytes)
        if nbytes:
            ranges.append((start, start + nbytes, name))
    ranges.sort()
    for (_, prev_end, prev), (begin, _, name) in pairwise(ranges):
        if begin < prev_end:
            raise FormatError(f"{path}: tensors {prev!r} and {name!r} overlap")
    return tensors, data_start


class GGUFFile(RowFile):
    """One parsed GGUF file (`WeightFile`).

    Attributes:
        version (`int`): 2 or 3.
        metadata (`dict[str, object]`): key/values (large arrays as `GGUFArraySummary`).
        data_offset (`int`): absolute offset of the data section.
        header_bytes (`int`): bytes of key/values and tensor index (what had to be read).
    """

    format = "gguf"

    def __init__(
        self,
        source: ByteSource,
        *,
        version: int,
        tensors: dict[str, TensorInfo],
        metadata: dict[str, object],
        data_offset: int,
        header_bytes: int,
    ) -> None:
        super().__init__(source, tensors=tensors, metadata=metadata)
        self.version = version
        self.data_offset = data_offset
        self.header_bytes = header_bytes

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def tokens(self) -> list[str] | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens if isinstance(tokens, list) else None

    @property
    def file_type(self) -> str | None:
        """``general.file_type`` as a llama.cpp name (``Q4_K_M``, ``Q8_0``, ``F16``), if declared."""
        value = self.metadata.get("general.file_type")
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        try:
            name = LlamaFileType(value).name
        except ValueError:
            return None
        if name == "GUESSED":
            return None
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    def arch_value(self, key: str) -> object | None:
        """``<architecture>.<key>`` (e.g. ``block_count``, ``attention.head_count``)."""
        arch = self.architecture
        return None if arch is None else self.metadata.get(f"{arch}.{key}")


def open_gguf(
    source: ByteSource, *, prefetch: int = PREFETCH_BYTES, max_header: int = MAX_HEADER_BYTES
) -> GGUFFile:
    """Parse a GGUF header from range reads (prefix doubling up to ``max_header``).

    Args:
        source (`ByteSource`): the file.
        prefetch (`int`): first read size.
        max_header (`int`): cap on the bytes read for the header.

    Returns:
        `GGUFFile`; no tensor data has been read.

    Raises:
        `FormatError`: truncated, malformed, inconsistent, or a header above the cap.
        `UnsupportedFormat`: GGUF v1 or big-endian files.
    """
    path, size = source.path, source.size
    if size < 24:
        raise FormatError(f"{path}: {size} bytes is too short for a GGUF file")
    limit = min(size, max_header)
    buf = source.read(0, min(limit, max(prefetch, 24)))
    while True:
        try:
            header = _parse_header(buf, path=path, file_size=size, limit=limit)
            break
        except _NeedMore as more:
            new_len = min(limit, max(2 * len(buf), more.end))
        buf = buf + source.read(len(buf), new_len)
    tensors, data_start = _tensor_infos(header, path=path, file_size=size)
    return GGUFFile(
        source,
        version=header.version,
        tensors=tensors,
        metadata=header.metadata,
        data_offset=data_start,
        header_bytes=header.index_end,
    )
