"""The ``safetensors`` kind of virtual file: a valid safetensors file generated on the fly.

Spec (``<name>.safetensors.virtual.json``)::

    {
      "kind": "safetensors",
      "seed": 1234,                                   # or "derivation" (below), or both
      "metadata": {"format": "pt"},                   # optional __metadata__ (str -> str)
      "tensors": [
        {"name": "model.embed_tokens.weight", "dtype": "BF16", "shape": [32000, 4096],
         "init": {"std": 0.02}},                      # init.mean defaults to 0
        {"name": "model.norm.weight", "dtype": "F32", "shape": [4096], "init": {"mean": 1.0, "std": 0.1}}
      ],
      "derivation": {"base_seed": 1234, "noise_seed": 7, "rel_noise": 0.05}   # optional
    }

Element ``i`` of tensor ``t`` is ``mean + std·z(seed, t, i)`` with ``z`` from
`monitor.localhub.virtual.normal_values`. With a derivation it is
``mean + std·(z(base_seed, t, i) + rel_noise·z(noise_seed, t, i))``: the base model plus Gaussian
noise of ``rel_noise`` times the tensor's scale, i.e. a "fine-tuned" derivative of the virtual model
with ``seed = base_seed``. Both come from `monitor.localhub.virtual.ValueSource`, the ``seed``/
``derivation`` reader every kind shares, so the GGUF and GPTQ kinds of one derivation hold the same
weights. Values are rounded to the tensor's dtype (F32, F16 or BF16, round to nearest
even), so the stored bytes — and everything a reader decodes — are exact and reproducible.

Layout is what ``safetensors`` writes: u64-LE header length, JSON header padded with spaces to a
multiple of 8, then the tensors back to back in spec order.
"""

from __future__ import annotations

import bisect
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import FormatError
from monitor.localhub.virtual import ValueSource, VirtualFile

__all__ = ["DTYPE_SIZES", "VirtualSafetensors", "VirtualTensor", "from_dtype_bytes", "to_dtype_bytes"]

DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}
_MAX_TENSORS = 1_000_000
_MAX_NDIM = 8
_MAX_ELEMENTS = 1 << 48
_MAX_NAME = 1024
_F16_MAX = 65504.0
_SIGMA_BOUND = 12.0  # |z| from ndtri of a 53-bit uniform stays below ~8.3; keep a margin


@dataclass(frozen=True)
class VirtualTensor:
    """One tensor of a virtual safetensors file.

    Attributes:
        name (`str`), dtype (`str`), shape (`tuple[int, ...]`): as in the header.
        mean (`float`), std (`float`): the distribution of its values.
        offset (`int`): absolute file offset of its first data byte.
        nbytes (`int`): data bytes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    mean: float
    std: float
    offset: int
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _int(value: Any, what: str, *, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{what} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise FormatError(f"{what} must be >= {lo}, got {value}")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FormatError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def to_dtype_bytes(values: np.ndarray, dtype: str) -> bytes:
    """float64 values -> little-endian bytes of ``dtype`` (``F32``, ``F16``, ``BF16``; BF16 rounds to
    nearest even, as ``torch`` does), the bytes every float kind stores."""
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + (((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def from_dtype_bytes(data: bytes, dtype: str) -> np.ndarray:
    """Decode stored ``F32``/``F16``/``BF16`` bytes to float32 exactly (inverse of `to_dtype_bytes`)."""
    if dtype == "F32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if dtype == "F16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)


class VirtualSafetensors(VirtualFile):
    """A safetensors file generated from a spec (see the module docstring)."""

    kind = "safetensors"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        allowed = {"kind", "version", "seed", "metadata", "tensors", "derivation"}
        unknown = set(spec) - allowed
        if unknown:
            raise FormatError(f"unknown keys in safetensors spec: {sorted(unknown)}")
        if _int(spec.get("version", 1), "version") != 1:
            raise FormatError(f"unsupported safetensors spec version {spec.get('version')}")
        self.value_source = ValueSource.from_spec(spec)
        metadata = spec.get("metadata", {"format": "pt"})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise FormatError("'metadata' must map strings to strings")
        relative = self._parse_tensors(spec.get("tensors"))  # offsets relative to the data section
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        for t in relative:
            header[t.name] = {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "data_offsets": [t.offset, t.offset + t.nbytes],
            }
        header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        header_bytes += b" " * (-len(header_bytes) % 8)
        self._prefix = struct.pack("<Q", len(header_bytes)) + header_bytes
        base = len(self._prefix)
        self.tensors = [
            VirtualTensor(t.name, t.dtype, t.shape, t.mean, t.std, base + t.offset, t.nbytes)
            for t in relative
        ]
        self._by_name = {t.name: t for t in self.tensors}
        self._starts = [t.offset for t in self.tensors]
        self.header_size = base
        self.size = base + sum(t.nbytes for t in relative)

    def _parse_tensors(self, raw: Any) -> list[VirtualTensor]:
        if not isinstance(raw, list) or not raw:
            raise FormatError("'tensors' must be a non-empty list")
        if len(raw) > _MAX_TENSORS:
            raise FormatError(f"more than {_MAX_TENSORS} tensors")
        out: list[VirtualTensor] = []
        seen: set[str] = set()
        pos = 0
        for i, item in enumerate(raw):
            where = f"tensors[{i}]"
            if not isinstance(item, dict) or set(item) - {"name", "dtype", "shape", "init"}:
                raise FormatError(f"{where} must be an object with name, dtype, shape, init")
            name = item.get("name")
            if not isinstance(name, str) or not name or len(name) > _MAX_NAME or name == "__metadata__":
                raise FormatError(f"{where}.name must be a non-empty string (<= {_MAX_NAME} chars)")
            if name in seen:
                raise FormatError(f"duplicate tensor name {name!r}")
            seen.add(name)
            dtype = item.get("dtype")
            if dtype not in DTYPE_SIZES:
                raise FormatError(f"{where}.dtype must be one of {sorted(DTYPE_SIZES)}, got {dtype!r}")
            shape = item.get("shape")
            if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
                raise FormatError(f"{where}.shape must be a list of at most {_MAX_NDIM} sizes")
            dims = tuple(_int(d, f"{where}.shape", lo=0) for d in shape)
            n = math.prod(dims)
            if n > _MAX_ELEMENTS:
                raise FormatError(f"{where} has {n} elements; the limit is {_MAX_ELEMENTS}")
            init = item.get("init", {})
            if not isinstance(init, dict) or set(init) - {"mean", "std"}:
                raise FormatError(f"{where}.init must be {{mean, std}}")
            mean = _float(init.get("mean", 0.0), f"{where}.init.mean")
            std = _float(init.get("std", 0.02), f"{where}.init.std")
            if std < 0:
                raise FormatError(f"{where}.init.std must be >= 0")
            if (
                dtype == "F16"
                and abs(mean) + _SIGMA_BOUND * std * (1 + self.value_source.rel_noise) > _F16_MAX
            ):
                raise FormatError(f"{where}: values would overflow F16")
            nbytes = n * DTYPE_SIZES[dtype]
            out.append(VirtualTensor(name, dtype, dims, mean, std, pos, nbytes))
            pos += nbytes
        return out

    # -- values ------------------------------------------------------------------------------------

    def values(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Unrounded float64 values of elements ``[start, stop)`` of a tensor (flat, row-major)."""
        t = self._tensor(name)
        stop = t.n_elements if stop is None else stop
        if not 0 <= start <= stop <= t.n_elements:
            raise FormatError(f"{name}: element range [{start}, {stop}) outside 0..{t.n_elements}")
        return t.mean + t.std * self.value_source.normals(name, start, stop)

    def tensor(self, name: str, *, rows: Sequence[int] | range | None = None) -> np.ndarray:
        """The stored values of a tensor (or of some rows of its first axis) as float32, reshaped.

        Exactly what ``safetensors`` decodes from the generated bytes (BF16/F16 widened to float32).
        """
        t = self._tensor(name)
        if rows is None:
            data = self.read(t.offset, t.offset + t.nbytes)
            return from_dtype_bytes(data, t.dtype).reshape(t.shape)
        if not t.shape:
            raise FormatError(f"{name} is a scalar; it has no rows")
        row_elems = math.prod(t.shape[1:])
        row_bytes = row_elems * t.itemsize
        parts = []
        for r in rows:
            if not 0 <= r < t.shape[0]:
                raise FormatError(f"{name}: row {r} outside 0..{t.shape[0] - 1}")
            parts.append(self.read(t.offset + r * row_bytes, t.offset + (r + 1) * row_bytes))
        flat = from_dtype_bytes(b"".join(parts), t.dtype)
        return flat.reshape((len(parts), *t.shape[1:]))

    def tensor_info(self, name: str) -> VirtualTensor:
        """Layout of one tensor (absolute offset and size)."""
        return self._tensor(name)

    def _tensor(self, name: str) -> VirtualTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise FormatError(f"no tensor {name!r} in this virtual file") from None

    # -- bytes -------------------------------------------------------------------------------------

    def read(self, start: int, end: int) -> bytes:
        self._check(start, end)
        out = bytearray()
        if start < len(self._prefix):
            out += self._prefix[start : min(end, len(self._prefix))]
        pos = max(start, len(self._prefix))
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end and 0 <= i < len(self.tensors):
            t = self.tensors[i]
            t_end = t.offset + t.nbytes
            if t.nbytes and pos < t_end:
                stop = min(end, t_end)
                lo, hi = pos - t.offset, stop - t.offset
                first, last = lo // t.itemsize, -(-hi // t.itemsize)
                data = to_dtype_bytes(self.values(t.name, first, last), t.dtype)
                skip = lo - first * t.itemsize
                out += data[skip : skip + (hi - lo)]
                pos = stop
            i += 1
        return bytes(out)
