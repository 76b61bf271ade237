"""Quantised safetensors checkpoints: GPTQ, AWQ and bitsandbytes (int8, NF4/FP4), dequantised on read.

Each quantised ``nn.Linear`` (``out × in``) is stored as several tensors under one module prefix
``P``; `monitor.formats.grouping` recognises the groups by name and builds one logical tensor
``P.weight`` per group from the classes here, with everything else (norms, embeddings, often
``lm_head``) passed through as `DenseTensor`.

* **GPTQ** (AutoGPTQ/GPTQModel): ``qweight`` int32 ``[in·bits/32, out]`` packed along *in* (value
  ``i`` in row ``i // (32/bits)`` at bit ``bits·(i mod 32/bits)``), ``qzeros`` int32
  ``[groups, out·bits/32]`` packed along *out*, ``scales`` ``[groups, out]``, optional ``g_idx``
  int32 ``[in]`` (group of each input; act-order makes it non-monotonic). ``W[o, i] = scales[g_i, o]
  · (q[i, o] − z[g_i, o])`` where the v1 format (``checkpoint_format`` ``gptq``, the default) stores
  ``z − 1`` and ``gptq_v2`` stores ``z``. Bits 2, 4 and 8.
* **AWQ** (AutoAWQ GEMM): ``qweight`` int32 ``[in, out/8]`` packed along *out* in the interleaved
  order `AWQ_ORDER`; ``qzeros`` ``[groups, out/8]`` likewise; ``scales`` ``[groups, out]``;
  ``W[o, i] = scales[i//gs, o] · (q[i, o] − z[i//gs, o])``. 4 bits, GEMM layout only.
* **bitsandbytes int8**: ``weight`` int8 ``[out, in]`` + ``SCB`` f32 ``[out]``;
  ``W = weight · SCB[:, None] / 127``.
* **bitsandbytes 4-bit** (NF4/FP4): ``weight`` uint8 packed two values a byte (high nibble first) +
  ``weight.absmax`` per block (itself 8-bit quantised when nested) + ``weight.quant_map`` + a JSON
  ``weight.quant_state.bitsandbytes__<type>`` with shape and block sizes, read at open.

For GPTQ and AWQ an *input column* (an MLP unit of ``down``) is one packed row plus one scales row:
cheap. An output row is a strided column of every packed row: the whole tensor. The logical tensors
say so through ``rows_contiguous``/``cols_contiguous``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.logical import LogicalTensor
from monitor.formats.rows import Need, ReadPlan, RowFile

__all__ = [
    "AWQ_ORDER",
    "AWQLinear",
    "Bnb4bitLinear",
    "BnbInt8Linear",
    "GPTQLinear",
]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""AutoAWQ packing: nibble ``i`` of a packed int32 holds output ``8·col + AWQ_ORDER[i]``."""
_AWQ_REVERSE = np.argsort(AWQ_ORDER)  # output 8·col + k is nibble _AWQ_REVERSE[k]
_GROUP_SIZES = (32, 64, 128, 256, 512, 1024)


def _unpack_cols(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 ``(m, k)`` packed along columns -> ``(m, k·32/bits)`` values in plain order."""
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    vals = (packed.view(np.uint32)[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    return vals.reshape(packed.shape[0], -1)


def _unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 ``(k, n)`` packed along rows -> ``(k·32/bits, n)`` values in plain order."""
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :, None]
    vals = (packed.view(np.uint32)[:, None, :] >> shifts) & np.uint32((1 << bits) - 1)
    return vals.reshape(-1, packed.shape[1])


def _awq_unpack(packed: np.ndarray) -> np.ndarray:
    """AWQ int32 ``(m, k)`` -> ``(m, 8k)`` 4-bit values in output order."""
    vals = _unpack_cols(packed, 4).reshape(packed.shape[0], -1, 8)
    return vals[:, :, _AWQ_REVERSE].reshape(packed.shape[0], -1)


def _infer_group_size(n_in: int, groups: int, configured: int | None, where: str) -> int:
    if configured is not None and configured > 0:
        if math.ceil(n_in / configured) != groups:
            raise FormatError(
                f"{where}: group size {configured} gives {math.ceil(n_in / configured)} "
                f"groups for {n_in} inputs, the scales have {groups}"
            )
        return configured
    if groups == 1:
        return n_in
    for gs in _GROUP_SIZES:
        if math.ceil(n_in / gs) == groups:
            return gs
    if n_in % groups == 0:
        return n_in // groups
    raise FormatError(f"{where}: cannot infer the group size of {n_in} inputs in {groups} groups")


def _shape(file: RowFile, name: str) -> tuple[int, ...]:
    return file.info(name).shape


class GPTQLinear(LogicalTensor):
    """A GPTQ-packed linear layer, dequantised on read (see the module docstring)."""

    def __init__(
        self,
        name: str,
        parts: Mapping[str, tuple[RowFile, str]],
        *,
        bits: int,
        group_size: int | None,
        zero_offset: int,
        trivial_g_idx: bool,
    ) -> None:
        self.name = name
        self.parts = dict(parts)
        self.bits = bits
        self.pack = 32 // bits
        qf, qn = parts["qweight"]
        rows, out = _shape(qf, qn)
        self.n_in, self.n_out = rows * self.pack, out
        self.groups = _shape(*parts["scales"])[0]
        where = f"{qf.path}: {name}"
        self.group_size = _infer_group_size(self.n_in, self.groups, group_size, where)
        self.zero_offset = zero_offset
        self.use_g_idx = "g_idx" in parts and not trivial_g_idx
        self.shape = (self.n_out, self.n_in)
        self.dtype = f"gptq-int{bits}"
        self.sources = tuple(n for _, n in self.parts.values())
        self.files = tuple(sorted({f.path for f, _ in self.parts.values()}))
        self.nbytes = sum(f.info(n).nbytes for f, n in self.parts.values())
        self.rows_contiguous = False
        self.cols_contiguous = True
        self.scheme = f"gptq:{bits}bit-g{group_size if group_size is not None else self.group_size}"

    def _need(self, part: str, rows: np.ndarray, *, native: bool = False) -> Need:
        f, n = self.parts[part]
        return Need(f, n, rows, native)

    def _check_groups(self, g: np.ndarray) -> np.ndarray:
        g = g.astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.groups):
            raise FormatError(f"{self.files[0]}: {self.name}: g_idx holds groups outside [0, {self.groups})")
        return g

    def _cols_with_groups(self, cols: np.ndarray, groups: np.ndarray) -> ReadPlan:
        ug, ginv = np.unique(self._check_groups(groups), return_inverse=True)
        needs = [
            self._need("qweight", cols // self.pack, native=True),
            self._need("scales", ug),
            self._need("qzeros", ug, native=True),
        ]
        shift = ((cols % self.pack) * self.bits).astype(np.uint32)[:, None]
        mask = np.uint32((1 << self.bits) - 1)

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            qw, sc, qz = arrays
            q = ((qw.view(np.uint32) >> shift) & mask).astype(np.float32)
            z = _unpack_cols(qz, self.bits)[:, : self.n_out].astype(np.float32) + self.zero_offset
            return (q - z[ginv]) * sc[ginv]

        return ReadPlan(needs, finish)

    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        if not self.use_g_idx:
            return self._cols_with_groups(cols, cols // self.group_size)
        sf, sn = self.parts["scales"]
        zf, zn = self.parts["qzeros"]
        qf, qn = self.parts["qweight"]
        bound = np.unique(cols // self.pack).size * qf.layout(qn).row_bytes + min(
            np.unique(cols).size, self.groups
        ) * (sf.layout(sn).row_bytes + zf.layout(zn).row_bytes)
        return ReadPlan(
            [self._need("g_idx", cols, native=True)],
            lambda arrays: self._cols_with_groups(cols, arrays[0]),
            followup_bytes=bound,
        )

    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        every = np.arange
        needs = [
            self._need("qweight", every(self.n_in // self.pack), native=True),
            self._need("scales", every(self.groups)),
            self._need("qzeros", every(self.groups), native=True),
        ]
        if self.use_g_idx:
            needs.append(self._need("g_idx", every(self.n_in), native=True))

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            qw, sc, qz = arrays[:3]
            g = self._check_groups(arrays[3]) if self.use_g_idx else every(self.n_in) // self.group_size
            q = _unpack_rows(np.ascontiguousarray(qw[:, rows]), self.bits).astype(np.float32)
            z = _unpack_cols(qz, self.bits)[:, rows].astype(np.float32) + self.zero_offset
            return np.ascontiguousarray(((q - z[g]) * sc[:, rows][g]).T)

        return ReadPlan(needs, finish)


class AWQLinear(LogicalTensor):
    """An AWQ (GEMM layout, 4-bit) linear layer, dequantised on read."""

    def __init__(
        self, name: str, parts: Mapping[str, tuple[RowFile, str]], *, group_size: int | None
    ) -> None:
        self.name = name
        self.parts = dict(parts)
        qf, qn = parts["qweight"]
        self.n_in, packed_out = _shape(qf, qn)
        self.n_out = packed_out * 8
        self.groups = _shape(*parts["scales"])[0]
        self.group_size = _infer_group_size(self.n_in, self.groups, group_size, f"{qf.path}: {name}")
        self.shape = (self.n_out, self.n_in)
        self.dtype = "awq-int4"
        self.sources = tuple(n for _, n in self.parts.values())
        self.files = tuple(sorted({f.path for f, _ in self.parts.values()}))
        self.nbytes = sum(f.info(n).nbytes for f, n in self.parts.values())
        self.rows_contiguous = False
        self.cols_contiguous = True
        self.scheme = f"awq:4bit-g{self.group_size}"

    def _need(self, part: str, rows: np.ndarray, *, native: bool = False) -> Need:
        f, n = self.parts[part]
        return Need(f, n, rows, native)

    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        ug, ginv = np.unique(cols // self.group_size, return_inverse=True)
        needs = [
            self._need("qweight", cols, native=True),
            self._need("scales", ug),
            self._need("qzeros", ug, native=True),
        ]

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            qw, sc, qz = arrays
            q = _awq_unpack(qw).astype(np.float32)
            z = _awq_unpack(qz).astype(np.float32)
            return (q - z[ginv]) * sc[ginv]

        return ReadPlan(needs, finish)

    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        needs = [
            self._need("qweight", np.arange(self.n_in), native=True),
            self._need("scales", np.arange(self.groups)),
            self._need("qzeros", np.arange(self.groups), native=True),
        ]
        col = rows // 8
        shift = (_AWQ_REVERSE[rows % 8] * 4).astype(np.uint32)[None, :]

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            qw, sc, qz = arrays
            q = ((qw.view(np.uint32)[:, col] >> shift) & np.uint32(0xF)).astype(np.float32)
            z = ((qz.view(np.uint32)[:, col] >> shift) & np.uint32(0xF)).astype(np.float32)
            g = np.arange(self.n_in) // self.group_size
            return np.ascontiguousarray(((q - z[g]) * sc[:, rows][g]).T)

        return ReadPlan(needs, finish)


class BnbInt8Linear(LogicalTensor):
    """A bitsandbytes LLM.int8 layer: ``weight`` int8 ``[out, in]`` and per-row ``SCB``."""

    def __init__(self, name: str, weight: tuple[RowFile, str], scb: tuple[RowFile, str]) -> None:
        self.name = name
        self.weight, self.scb = weight, scb
        self.shape = _shape(*weight)
        self.dtype = "bnb-int8"
        self.sources = (weight[1], scb[1])
        self.files = tuple(sorted({weight[0].path, scb[0].path}))
        self.nbytes = weight[0].info(weight[1]).nbytes + scb[0].info(scb[1]).nbytes
        self.rows_contiguous = True
        self.cols_contiguous = False
        self.scheme = "bnb:int8"

    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        needs = [Need(*self.weight, rows, True), Need(*self.scb, rows)]
        return ReadPlan(needs, lambda a: a[0].astype(np.float32) * (a[1] / 127.0)[:, None])

    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        every = np.arange(self.shape[0])
        needs = [Need(*self.weight, every, True), Need(*self.scb, every)]
        return ReadPlan(
            needs,
            lambda a: np.ascontiguousarray((a[0][:, cols].astype(np.float32) * (a[1] / 127.0)[:, None]).T),
        )


class Bnb4bitLinear(LogicalTensor):
    """A bitsandbytes 4-bit (NF4/FP4) layer with optional nested (double) quantisation of absmax."""

    def __init__(self, name: str, parts: Mapping[str, tuple[RowFile, str]], state: Mapping[str, Any]) -> None:
        self.name = name
        self.parts = dict(parts)
        wf, _ = parts["weight"]
        where = f"{wf.path}: {name}"
        shape = state.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise FormatError(f"{where}: quant state needs a 2-D 'shape'")
        self.shape = (shape[0], shape[1])
        self.blocksize = self._pos_int(state.get("blocksize"), "blocksize", where)
        n = shape[0] * shape[1]
        if shape[1] % 2:
            raise UnsupportedFormat(f"{where}: rows of odd length {shape[1]} straddle packed bytes")
        self._expect(parts["weight"], (n + 1) // 2, where, "packed weight bytes")
        n_absmax = -(-n // self.blocksize)
        self._expect(parts["absmax"], n_absmax, where, "absmax entries")
        self._expect(parts["quant_map"], 16, where, "quant_map entries")
        self.nested = "nested_absmax" in parts
        if self.nested:
            self.nested_blocksize = self._pos_int(state.get("nested_blocksize"), "nested_blocksize", where)
            offset = state.get("nested_offset")
            if isinstance(offset, bool) or not isinstance(offset, int | float):
                raise FormatError(f"{where}: nested quant state needs a numeric 'nested_offset'")
            self.offset = float(offset)
            self._expect(
                parts["nested_absmax"], -(-n_absmax // self.nested_blocksize), where, "nested absmax"
            )
            self._expect(parts["nested_quant_map"], 256, where, "nested_quant_map entries")
        quant_type = str(state.get("quant_type", "nf4"))
        self.dtype = f"bnb-{quant_type}"
        self.sources = tuple(n for _, n in self.parts.values())
        self.files = tuple(sorted({f.path for f, _ in self.parts.values()}))
        self.nbytes = sum(f.info(n).nbytes for f, n in self.parts.values())
        self.rows_contiguous = True
        self.cols_contiguous = False
        self.scheme = f"bnb:{quant_type}"

    @staticmethod
    def _pos_int(value: object, what: str, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
            raise FormatError(f"{where}: quant state '{what}' must be a positive integer")
        return value

    @staticmethod
    def _expect(part: tuple[RowFile, str], count: int, where: str, what: str) -> None:
        info = part[0].info(part[1])
        numel = math.prod(info.shape)
        if numel != count or len(info.shape) > 2 or (len(info.shape) == 2 and info.shape[1] != 1):
            raise FormatError(f"{where}: {part[1]} has shape {info.shape}, expected {count} {what}")

    def _need(self, part: str, rows: np.ndarray, *, native: bool = False) -> Need:
        f, n = self.parts[part]
        return Need(f, n, rows, native)

    def plan_rows(self, rows: np.ndarray) -> ReadPlan:
        n_in = self.shape[1]
        byte_idx = ((rows * n_in)[:, None] // 2 + np.arange(n_in // 2)[None, :]).reshape(-1)
        elems = (rows * n_in)[:, None] + np.arange(n_in)[None, :]
        blocks = elems // self.blocksize
        ublocks = np.unique(blocks)
        needs = [
            self._need("weight", byte_idx, native=True),
            self._need("absmax", ublocks, native=self.nested),
            self._need("quant_map", np.arange(16)),
        ]
        if self.nested:
            unested = np.unique(ublocks // self.nested_blocksize)
            needs += [self._need("nested_absmax", unested), self._need("nested_quant_map", np.arange(256))]

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            packed = arrays[0].reshape(rows.size, n_in // 2)
            nibbles = np.stack([packed >> 4, packed & 0x0F], axis=-1).reshape(rows.size, n_in)
            absmax = arrays[1].reshape(-1)
            if self.nested:
                nested = arrays[3].reshape(-1)
                code = arrays[4].reshape(-1)
                absmax = code[absmax] * nested[np.searchsorted(unested, ublocks // self.nested_blocksize)]
                absmax = absmax + self.offset
            scale = absmax.astype(np.float32)[np.searchsorted(ublocks, blocks)]
            return arrays[2].reshape(-1)[nibbles] * scale

        return ReadPlan(needs, finish)

    def plan_cols(self, cols: np.ndarray) -> ReadPlan:
        plan = self.plan_rows(np.arange(self.shape[0]))
        rows_finish = plan.finish

        def finish(arrays: list[np.ndarray]) -> np.ndarray:
            full = rows_finish(arrays)
            assert isinstance(full, np.ndarray)
            return np.ascontiguousarray(full[:, cols].T)

        return ReadPlan(plan.needs, finish)
