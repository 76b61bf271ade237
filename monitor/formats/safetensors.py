"""safetensors: header parsing from range reads, strict validation, row decoding.

Layout: ``u64-LE n | n bytes of JSON header | data``. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the first data byte,
plus an optional ``"__metadata__"`` map of strings. Opening a file costs one read of the first
`PREFETCH_BYTES` (which holds most headers whole) and, for longer headers, one more read of the rest.

Everything the header claims is checked before a single data byte is trusted: size limits, dtype
whitelist, integer types, shape products against overflow, offsets inside the file and consistent
with dtype × shape, and no two tensors sharing bytes. A file that fails any check raises
`FormatError` naming the file and the tensor.
"""

from __future__ import annotations

from itertools import pairwise

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.base import TensorInfo
from monitor.formats.dtypes import DENSE_DTYPES
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.rows import RowFile
from monitor.remote.source import ByteSource

__all__ = [
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_NAME_CHARS",
    "MAX_TENSORS",
    "PREFETCH_BYTES",
    "SAFETENSORS_DTYPES",
    "SafetensorsFile",
    "open_safetensors",
    "parse_header",
]

PREFETCH_BYTES = 64 * 1024
"""First read of a file; holds the whole header of ~95% of single-file checkpoints."""
MAX_HEADER_BYTES = 100_000_000
"""Largest header accepted (the limit of the reference Rust implementation)."""
MAX_TENSORS = 1_000_000
"""Most tensors in one file (a 100 MB header cannot describe many more)."""
MAX_NAME_CHARS = 1024
"""Longest tensor name; real names stay below 200 characters."""
MAX_DIMS = 16
"""Most dimensions of one tensor."""
MAX_ELEMENTS = 1 << 48
"""Most elements of one tensor (256 T); larger products are treated as overflow attacks."""

SAFETENSORS_DTYPES = frozenset(DENSE_DTYPES)
"""The dtype whitelist: every element-wise type safetensors defines and we can decode."""
_KNOWN_UNSUPPORTED = {"F4", "F6_E2M3", "F6_E3M2", "C64"}


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def parse_header(
    header: dict[str, object], *, path: str, data_start: int, file_size: int
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a decoded header and turn it into tensor infos.

    Args:
        header (`dict`): the decoded JSON object.
        path (`str`): file path, for messages and `TensorInfo.file`.
        data_start (`int`): absolute offset of the first data byte (``8 + n``).
        file_size (`int`): size of the file.

    Returns:
        ``(tensors by name, __metadata__)``.

    Raises:
        `FormatError`: any inconsistency; `UnsupportedFormat` for known but unsupported dtypes.
    """
    metadata: dict[str, str] = {}
    raw_meta = header.get("__metadata__")
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise FormatError(f"{path}: __metadata__ must map strings to strings")
        metadata = dict(raw_meta)
    if len(header) > MAX_TENSORS + 1:
        raise FormatError(f"{path}: {len(header)} header entries exceed the limit of {MAX_TENSORS}")
    data_len = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name[:100]!r}"
        if len(name) > MAX_NAME_CHARS:
            raise FormatError(f"{where}: name longer than {MAX_NAME_CHARS} characters")
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: entry must be an object")
        dtype = entry.get("dtype")
        if not isinstance(dtype, str):
            raise FormatError(f"{where}: missing or non-string dtype")
        if dtype not in SAFETENSORS_DTYPES:
            if dtype in _KNOWN_UNSUPPORTED:
                raise UnsupportedFormat(f"{where}: dtype {dtype} is not supported")
            raise FormatError(f"{where}: unknown dtype {dtype[:40]!r}")
        shape_raw = entry.get("shape")
        if not isinstance(shape_raw, list):
            raise FormatError(f"{where}: missing or non-list shape")
        if len(shape_raw) > MAX_DIMS:
            raise FormatError(f"{where}: {len(shape_raw)} dimensions exceed the limit of {MAX_DIMS}")
        numel = 1
        shape: list[int] = []
        for d in shape_raw:
            dim = _int(d, f"{where}: shape entry")
            if dim < 0:
                raise FormatError(f"{where}: negative dimension {dim}")
            if dim > MAX_ELEMENTS:  # one by one: a zero dimension makes the product 0 whatever follows
                raise FormatError(f"{where}: dimension {dim} exceeds {MAX_ELEMENTS}")
            numel *= dim
            if numel > MAX_ELEMENTS:
                raise FormatError(f"{where}: shape product exceeds {MAX_ELEMENTS} elements")
            shape.append(dim)
        offsets = entry.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise FormatError(f"{where}: data_offsets must be a list [begin, end]")
        begin = _int(offsets[0], f"{where}: data_offsets")
        end = _int(offsets[1], f"{where}: data_offsets")
        if not 0 <= begin <= end <= data_len:
            raise FormatError(
                f"{where}: data_offsets [{begin}, {end}] outside the data section of {data_len} bytes"
            )
        nbytes = numel * DENSE_DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise FormatError(
                f"{where}: {dtype}{shape} needs {nbytes} bytes but data_offsets span {end - begin}"
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), path, data_start + begin, nbytes)
        if nbytes:
            ranges.append((begin, end, name))
    ranges.sort()
    for (_, prev_end, prev), (begin, _, name) in pairwise(ranges):
        if begin < prev_end:
            raise FormatError(f"{path}: tensors {prev[:100]!r} and {name[:100]!r} overlap")
    return tensors, metadata


class SafetensorsFile(RowFile):
    """One parsed ``.safetensors`` file (`WeightFile`).

    Attributes:
        header_bytes (`int`): size of the JSON header (``n``).
        metadata (`dict[str, str]`): the ``__metadata__`` map.
    """

    format = "safetensors"

    def __init__(
        self,
        source: ByteSource,
        *,
        tensors: dict[str, TensorInfo],
        metadata: dict[str, str],
        header_bytes: int,
    ) -> None:
        super().__init__(source, tensors=tensors, metadata=dict(metadata))
        self.header_bytes = header_bytes


def open_safetensors(source: ByteSource, *, prefetch: int = PREFETCH_BYTES) -> SafetensorsFile:
    """Parse a safetensors header with at most two range reads.

    Args:
        source (`ByteSource`): the file.
        prefetch (`int`): size of the first read (clipped to the file).

    Returns:
        `SafetensorsFile`; no tensor data has been read.

    Raises:
        `FormatError`: truncated, malformed or inconsistent header.
    """
    path, size = source.path, source.size
    if size < 8:
        raise FormatError(f"{path}: {size} bytes is too short for a safetensors file")
    head = source.read(0, min(size, max(prefetch, 8)))
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > size:
        raise FormatError(f"{path}: header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = head[8 : 8 + n] if 8 + n <= len(head) else head[8:] + source.read(len(head), 8 + n)
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        raise FormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    header = loads_strict(raw, what=f"{path}: header")
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header must be a JSON object")
    tensors, metadata = parse_header(header, path=path, data_start=8 + n, file_size=size)
    return SafetensorsFile(source, tensors=tensors, metadata=metadata, header_bytes=n)
