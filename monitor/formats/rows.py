"""Row-level reads shared by every parser, and read plans that fetch many spans in one call.

Every layout we read stores a tensor's rows (first axis) as contiguous runs of whole blocks, so
"rows 3, 4, 5 and 90 of tensor T" is two byte spans. A `ReadPlan` lists what one logical read needs
(possibly several tensors: a GPTQ column needs ``qweight``, ``scales`` and ``qzeros`` rows) and
`execute` turns it into exactly one `ByteSource.read_many` call per file, with overlapping and
touching spans merged, so the HTTP layer sees the whole read at once and can coalesce it; the calls
for different files run concurrently (one round trip for a read spread over shards). A plan's
``finish`` may return a follow-up plan when the second read depends on the first (GPTQ act-order
``g_idx``); `plan_bytes` then adds the follow-up's declared upper bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.base import TensorInfo
from monitor.formats.dtypes import Codec, codec_for
from monitor.formats.parallel import map_concurrently
from monitor.remote.source import ByteSource, Span

__all__ = [
    "Need",
    "ReadPlan",
    "RowFile",
    "RowLayout",
    "as_index",
    "execute",
    "fetch",
    "merge_spans",
    "plan_bytes",
]

RowsArg = Sequence[int] | range | np.ndarray


def as_index(rows: RowsArg, n: int, *, what: str) -> np.ndarray:
    """Validate row/column indices against a length ``n``; return them as int64.

    Raises:
        `TypeError`: the indices are not integers.
        `IndexError`: an index lies outside ``[0, n)`` (a caller error, not a format error).
    """
    if isinstance(rows, range):
        idx = np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
    else:
        idx = np.asarray(rows)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"{what}: indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"{what}: index out of range [0, {n})")
    return idx


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same bytes (overlapping and touching spans joined)."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


@dataclass(frozen=True)
class RowLayout:
    """Where the rows of one tensor are.

    Attributes:
        codec (`Codec`): storage type.
        n_rows (`int`): rows (first axis; 1 for scalars).
        row_shape (`tuple[int, ...]`): shape of one row.
        row_elems (`int`), row_bytes (`int`): size of one row.
        whole (`bool`): rows are not separately addressable (a 1-D block-quantised tensor): any
            read fetches the whole tensor and selects elements.
    """

    codec: Codec
    n_rows: int
    row_shape: tuple[int, ...]
    row_elems: int
    row_bytes: int
    whole: bool


class RowFile:
    """Base of the parsed weight files (safetensors, GGUF, PyTorch zip).

    Subclasses parse a header into ``tensors`` and ``metadata``; this class decodes rows.
    Tensors listed in ``unsupported`` (name -> reason) exist in the file but cannot be read (e.g. a
    non-contiguous PyTorch tensor); reading them raises `UnsupportedFormat`.
    """

    format = ""

    def __init__(
        self,
        source: ByteSource,
        *,
        tensors: dict[str, TensorInfo],
        metadata: dict[str, object],
        unsupported: dict[str, str] | None = None,
    ) -> None:
        self.source = source
        self.path = source.path
        self.tensors = tensors
        self.metadata = metadata
        self.unsupported = dict(unsupported or {})
        self._layouts: dict[str, RowLayout] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} tensors={len(self.tensors)}>"

    def info(self, name: str) -> TensorInfo:
        """The `TensorInfo` of ``name``; `KeyError` if absent, `UnsupportedFormat` if unreadable."""
        if name in self.unsupported:
            raise UnsupportedFormat(f"{self.path}: tensor {name!r}: {self.unsupported[name]}")
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None

    def layout(self, name: str) -> RowLayout:
        cached = self._layouts.get(name)
        if cached is not None:
            return cached
        info = self.info(name)
        codec = codec_for(info.dtype, where=f"{self.path}: {name}: ")
        shape = info.shape
        if len(shape) == 0:
            layout = RowLayout(codec, 1, (), 1, codec.block_bytes, whole=codec.block_elems != 1)
        elif len(shape) == 1 and codec.block_elems != 1:
            layout = RowLayout(codec, shape[0], (), 1, 0, whole=True)
        else:
            row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            layout = RowLayout(codec, shape[0], tuple(shape[1:]), row_elems, codec.nbytes(row_elems), False)
        self._layouts[name] = layout
        return layout

    # -- planning ---------------------------------------------------------------------------

    def spans(self, name: str, rows: np.ndarray) -> list[Span]:
        """Byte spans holding ``rows`` of ``name`` (unique, sorted, consecutive rows joined)."""
        info = self.info(name)
        lay = self.layout(name)
        if rows.size == 0:
            return []
        if lay.whole:
            return [(info.offset, info.offset + info.nbytes)]
        uniq = np.unique(rows)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [uniq.size]))
        base, rb = info.offset, lay.row_bytes
        return [
            (base + int(uniq[s]) * rb, base + (int(uniq[e - 1]) + 1) * rb)
            for s, e in zip(starts, ends, strict=True)
        ]

    def decode(
        self, name: str, rows: np.ndarray, blob: bytes | memoryview, *, native: bool = False
    ) -> np.ndarray:
        """Decode the bytes of `spans` (concatenated in order) into ``rows`` in the order asked.

        Returns:
            float32 (or the native element type when ``native``) of shape
            ``(len(rows), *row_shape)``; for a 1-D tensor ``(len(rows),)``.
        """
        lay = self.layout(name)
        info = self.tensors[name]
        conv = lay.codec.native if native else lay.codec.to_float32
        if lay.whole:
            flat = conv(blob)
            if len(info.shape) == 0:
                return flat.reshape(-1)[:1][np.zeros(rows.size, dtype=np.int64)]
            return flat[rows]
        uniq = np.unique(rows)
        expected = uniq.size * lay.row_bytes
        if len(blob) != expected:
            raise FormatError(
                f"{self.path}: {name}: got {len(blob)} bytes for {uniq.size} rows, expected {expected}"
            )
        values = conv(blob).reshape((uniq.size, *lay.row_shape))
        if uniq.size == rows.size and np.array_equal(uniq, rows):
            return values
        return values[np.searchsorted(uniq, rows)]

    # -- convenience reads --------------------------------------------------------------------

    def read_rows(self, name: str, rows: RowsArg, *, native: bool = False) -> np.ndarray:
        """Rows (first axis) of a tensor, reading only their bytes. See `WeightFile.read_rows`."""
        lay = self.layout(name)
        idx = as_index(rows, lay.n_rows, what=f"{self.path}: {name}")
        return execute(ReadPlan([Need(self, name, idx, native)], lambda arrays: arrays[0]))

    def read(self, name: str, *, native: bool = False) -> np.ndarray:
        """A whole tensor in its declared shape."""
        info = self.info(name)
        lay = self.layout(name)
        flat = self.read_rows(name, range(lay.n_rows), native=native)
        return flat.reshape(info.shape)


@dataclass(frozen=True)
class Need:
    """Rows of one tensor that a plan needs.

    Attributes:
        file (`RowFile`), tensor (`str`): where.
        rows (`np.ndarray`): row indices (any order, repeats allowed; validated by the planner).
        native (`bool`): decode to the native element type instead of float32.
    """

    file: RowFile
    tensor: str
    rows: np.ndarray
    native: bool = False

    @cached_property
    def spans(self) -> list[Span]:
        return self.file.spans(self.tensor, self.rows)


@dataclass
class ReadPlan:
    """What one logical read fetches, and how to turn the decoded pieces into the answer.

    Attributes:
        needs (`list[Need]`): tensors and rows, fetched together.
        finish (`Callable`): receives one decoded array per need (same order); returns the result
            or a follow-up `ReadPlan`.
        followup_bytes (`int`): upper bound of what a follow-up plan reads (for `plan_bytes`).
    """

    needs: list[Need]
    finish: Callable[[list[np.ndarray]], np.ndarray | ReadPlan]
    followup_bytes: int = 0


def plan_bytes(plan: ReadPlan) -> int:
    """Bytes `execute` would fetch for ``plan`` (exact, plus the declared follow-up bound)."""
    total = 0
    by_file: dict[int, list[Span]] = {}
    for need in plan.needs:
        by_file.setdefault(id(need.file), []).extend(need.spans)
    for spans in by_file.values():
        total += sum(e - s for s, e in merge_spans(spans))
    return total + plan.followup_bytes


def _read_file(job: tuple[RowFile, list[Span]]) -> tuple[list[Span], list[bytes]]:
    """One file's merged spans and their bytes, checked for length."""
    file, spans = job
    merged = merge_spans(spans)
    chunks = file.source.read_many(merged) if merged else []
    for (s, e), chunk in zip(merged, chunks, strict=True):
        if len(chunk) != e - s:
            raise FormatError(f"{file.path}: short read of [{s}, {e}): {len(chunk)} bytes")
    return merged, chunks


def fetch(needs: Sequence[Need]) -> list[np.ndarray]:
    """Fetch and decode several needs with one `read_many` per file; one array per need.

    The files are read concurrently (`map_concurrently`), so a batch spread over the shards of a
    checkpoint costs one round trip rather than one per shard.
    """
    files: dict[int, RowFile] = {}
    spans_by_file: dict[int, list[Span]] = {}
    for need in needs:
        files[id(need.file)] = need.file
        spans_by_file.setdefault(id(need.file), []).extend(need.spans)
    keys = list(spans_by_file)
    results = map_concurrently(_read_file, [(files[k], spans_by_file[k]) for k in keys])
    data: dict[int, tuple[list[Span], list[bytes]]] = dict(zip(keys, results, strict=True))
    out: list[np.ndarray] = []
    for need in needs:
        merged, chunks = data[id(need.file)]
        starts = [s for s, _ in merged]
        parts: list[memoryview] = []
        for s, e in need.spans:
            i = bisect.bisect_right(starts, s) - 1
            base = merged[i][0]
            parts.append(memoryview(chunks[i])[s - base : e - base])  # no copy of large reads
        blob = parts[0] if len(parts) == 1 else b"".join(parts)
        out.append(need.file.decode(need.tensor, need.rows, blob, native=need.native))
    return out


def execute(plan: ReadPlan) -> np.ndarray:
    """Run a plan: one `read_many` per file per stage (files concurrently), then ``finish``."""
    current: ReadPlan | np.ndarray = plan
    while isinstance(current, ReadPlan):
        current = current.finish(fetch(current.needs))
    return current
