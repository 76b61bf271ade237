"""Virtual files: weight files generated on the fly from a small JSON spec, never stored.

A repo folder may hold ``<file>.virtual.json``; the hub then lists and serves ``<file>`` with bytes
computed from the spec, so a 7B or 70B checkpoint can be served (and range-read anywhere) from a few
kilobytes of disk. The same generator is used by anyone who needs the bytes locally (the registry reads
a protected virtual model through `open_virtual`), so hub and registry always agree.

Plug-in interface: a kind is one subclass of `VirtualFile` with a class attribute ``kind`` (the spec's
``"kind"`` value), a ``size`` and ``read(start, end)``. Subclasses register themselves on definition::

    class VirtualGGUF(VirtualFile):
        kind = "gguf"

        def __init__(self, spec):
            super().__init__(spec)        # canonical bytes and sha256 of the spec
            ...                           # validate, lay out, set self.size

        def read(self, start, end):
            ...                           # bytes [start, end), a pure function of the spec

Identity: the LFS ``sha256`` of a virtual file is the SHA-256 of its *canonical spec bytes* (JSON with
sorted keys, no whitespace, UTF-8), not of the generated content; hashing 14 GB per listing is not an
option. It changes whenever the spec changes, which is all a commit id needs.

Values: kinds derive element values from a counter-based generator, `normal_values`, a pure function
of (seed, tensor name, flat index): splitmix64 over uint64 counters, mapped to a uniform in (0, 1)
and through the inverse normal CDF. Any element range is computed without generating the rest.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.special import ndtri

from monitor.errors import FormatError
from monitor.remote.source import ByteBudget, ReadStats, Span, check_span

__all__ = [
    "MAX_SPEC_BYTES",
    "VIRTUAL_SUFFIX",
    "VirtualFile",
    "VirtualFileSource",
    "canonical_spec_bytes",
    "materialize",
    "normal_values",
    "open_virtual",
    "stream_key",
]

VIRTUAL_SUFFIX = ".virtual.json"
MAX_SPEC_BYTES = 16 * 1024 * 1024
"""Specs are small; a bigger one is refused rather than parsed."""

_MASK64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MATERIALIZE_CHUNK = 16 * 1024 * 1024
_BUILTIN_KIND_MODULES = ("monitor.localhub.virtual_safetensors",)
"""Modules defining the kinds that ship with HubSentry; imported on first use (they import this one)."""


def canonical_spec_bytes(spec: Mapping[str, Any]) -> bytes:
    """The bytes a virtual file's identity is hashed from: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def stream_key(seed: int, name: str) -> int:
    """The 64-bit key of the value stream of tensor ``name`` under ``seed``."""
    name_hash = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")
    mixed = _mix64(np.array([(seed & _MASK64) ^ name_hash], dtype=np.uint64))
    return int(mixed[0])


def normal_values(seed: int, name: str, start: int, stop: int) -> np.ndarray:
    """Standard-normal values of elements ``[start, stop)`` of tensor ``name`` (float64).

    Element ``i`` is ``ndtri(u_i)`` with ``u_i`` the top 53 bits of ``splitmix64(key + (i+1)·γ)``
    offset by half a unit, so ``u_i`` lies strictly inside (0, 1). Pure in (seed, name, i).
    """
    if not 0 <= start <= stop:
        raise ValueError(f"bad element range [{start}, {stop})")
    key = np.uint64(stream_key(seed, name))
    counters = np.arange(start + 1, stop + 1, dtype=np.uint64)
    bits = _mix64(counters * _GAMMA + key)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
    return np.asarray(ndtri(uniform), dtype=np.float64)


class VirtualFile(ABC):
    """A file whose bytes are a pure function of a JSON spec.

    Args:
        spec (`Mapping[str, Any]`): the parsed ``.virtual.json``; ``spec["kind"]`` selects the subclass.

    Attributes:
        kind (`str`): class attribute naming the kind; subclasses with a ``kind`` register themselves.
        spec (`dict`): the spec as given.
        sha256 (`str`): SHA-256 of `canonical_spec_bytes` (the file's LFS id).
        size (`int`): file size in bytes (set by the subclass).
    """

    kind: ClassVar[str] = ""
    _kinds: ClassVar[dict[str, type[VirtualFile]]] = {}
    size: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            if kind in VirtualFile._kinds and VirtualFile._kinds[kind] is not cls:
                raise TypeError(f"virtual file kind {kind!r} is already registered")
            VirtualFile._kinds[kind] = cls

    def __init__(self, spec: Mapping[str, Any]) -> None:
        try:
            self.spec_bytes = canonical_spec_bytes(spec)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"virtual spec is not plain JSON: {exc}") from exc
        self.spec = dict(spec)
        self.sha256 = hashlib.sha256(self.spec_bytes).hexdigest()

    @abstractmethod
    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file; ``FormatError`` if the span lies outside it."""

    @classmethod
    def kinds(cls) -> list[str]:
        """Registered kinds (the built-in ones are loaded on first call)."""
        for module in _BUILTIN_KIND_MODULES:
            importlib.import_module(module)
        return sorted(VirtualFile._kinds)

    @classmethod
    def from_spec(cls, spec: Any) -> VirtualFile:
        """Build the virtual file a spec describes.

        Raises:
            `FormatError`: not an object, unknown ``kind``, or invalid for its kind.
        """
        if not isinstance(spec, Mapping):
            raise FormatError("virtual spec must be a JSON object")
        kind = spec.get("kind")
        known = cls.kinds()
        impl = VirtualFile._kinds.get(kind) if isinstance(kind, str) else None
        if impl is None:
            raise FormatError(f"unknown virtual file kind {kind!r}; known kinds: {known}")
        return impl(spec)

    def _check(self, start: int, end: int) -> None:
        check_span(f"virtual {self.kind} file", self.size, start, end)


def open_virtual(path: str | os.PathLike[str]) -> VirtualFile:
    """Load ``<file>.virtual.json`` (size-limited) and return its `VirtualFile`.

    Raises:
        `FormatError`: too large, not JSON, or not a valid spec (the message names the file).
        `OSError`: the file cannot be read.
    """
    spec_path = Path(path)
    with open(spec_path, "rb") as fh:
        raw = fh.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise FormatError(f"{spec_path}: virtual spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"{spec_path}: not valid JSON: {exc}") from exc
    try:
        return VirtualFile.from_spec(spec)
    except FormatError as exc:
        raise FormatError(f"{spec_path}: {exc}") from exc


def materialize(
    source: VirtualFile | str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    start: int = 0,
    end: int | None = None,
) -> int:
    """Write bytes ``[start, end)`` of a virtual file (default: all of it) to ``dest``.

    Returns:
        The number of bytes written. Memory stays bounded (16 MiB chunks).
    """
    vf = source if isinstance(source, VirtualFile) else open_virtual(source)
    stop = vf.size if end is None else end
    check_span(str(dest), vf.size, start, stop)
    written = 0
    with open(dest, "wb") as out:
        pos = start
        while pos < stop:
            chunk = vf.read(pos, min(pos + _MATERIALIZE_CHUNK, stop))
            out.write(chunk)
            pos += len(chunk)
            written += len(chunk)
    return written


class VirtualFileSource:
    """A virtual file as a `monitor.remote.source.ByteSource`, counted like a local file.

    Lets the registry fingerprint a protected *virtual* model through the same generator the hub
    serves, with the same budget and statistics as `LocalFileSource`.
    """

    def __init__(self, vf: VirtualFile, *, path: str, stats: ReadStats, budget: ByteBudget) -> None:
        self.vf = vf
        self.path = path
        self.size = vf.size
        self._stats = stats
        self._budget = budget

    def read(self, start: int, end: int) -> bytes:
        check_span(self.path, self.size, start, end)
        self._budget.reserve(end - start, what=self.path)
        data = self.vf.read(start, end)
        self._stats.add(self.path, len(data))
        return data

    def read_many(self, spans: Sequence[Span]) -> list[bytes]:
        return [self.read(s, e) for s, e in spans]

    def close(self) -> None:
        """Nothing to release; present for symmetry with `LocalFileSource`."""
