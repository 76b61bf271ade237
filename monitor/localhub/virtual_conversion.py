"""What the GGUF and GPTQ kinds share: a file that stores a *conversion* of a virtual Llama.

Both kinds read the same spec keys for the weights (`LlamaWeights.SPEC_KEYS`: ``model``, ``seed`` or
``derivation``, ``source_dtype``, ``init``), lay their tensors out after a header, and compute the bytes of
any range from the rows it touches. `LlamaConversion` holds that: spec validation, the layout index and
`read`, which walks the header, the tensors and any padding between them and asks the kind for whole
rows only (`_rows`), in batches that start at multiples of `_step` (GPTQ needs batches aligned to its
quantisation groups; GGUF rows are independent, so any batching gives the same bytes).
"""

from __future__ import annotations

import bisect
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from monitor.errors import FormatError
from monitor.localhub.virtual import VirtualFile
from monitor.localhub.virtual_llama import LlamaWeights

__all__ = ["LlamaConversion", "StoredTensor", "TensorT"]


class StoredTensor(Protocol):
    """Where one tensor of a conversion lies (the kinds' frozen tensor records satisfy it).

    Attributes:
        name (`str`): stored name. offset (`int`): absolute offset of its first byte.
        nbytes (`int`): data bytes. row_bytes (`int`): bytes of one row (the whole tensor for 1-D).
    """

    @property
    def name(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def row_bytes(self) -> int: ...


TensorT = TypeVar("TensorT", bound=StoredTensor)


class LlamaConversion(VirtualFile, Generic[TensorT]):
    """Base of the kinds storing a conversion of a virtual Llama (`VirtualGGUF`, `VirtualGPTQ`).

    Subclasses set ``kind`` and `EXTRA_KEYS`, call ``super().__init__(spec)`` (which reads the weights:
    ``self.weights``, ``self.model``), lay out their tensors and call `_set_layout`, and implement `_rows`.

    Attributes:
        weights (`LlamaWeights`): the float weights the file is a conversion of.
        model (`LlamaShape`): their dimensions.
        tensors (`list[StoredTensor]`): the stored tensors, by offset.
        size (`int`): file size.
    """

    EXTRA_KEYS: ClassVar[frozenset[str]] = frozenset()
    """Spec keys of the kind besides ``kind``, ``version`` and `LlamaWeights.SPEC_KEYS`."""

    tensors: list[TensorT]

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        unknown = set(spec) - LlamaWeights.SPEC_KEYS - {"kind", "version"} - self.EXTRA_KEYS
        if unknown:
            raise FormatError(f"unknown keys in {self.kind} spec: {sorted(unknown)}")
        if spec.get("version", 1) != 1:
            raise FormatError(f"unsupported {self.kind} spec version {spec.get('version')!r}")
        self.weights = LlamaWeights.from_spec(spec)
        self.model = self.weights.shape

    def _set_layout(self, prefix: bytes, tensors: Sequence[TensorT], size: int) -> None:
        """Record the header bytes, the tensors (ascending offsets, inside ``[len(prefix), size]``)."""
        self._prefix = prefix
        self.tensors = list(tensors)
        self._by_name = {t.name: t for t in self.tensors}
        self._starts = [t.offset for t in self.tensors]
        self.size = size

    def tensor_info(self, name: str) -> TensorT:
        """Layout of one stored tensor (the kind's tensor record)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise FormatError(f"no tensor {name!r} in this virtual {self.kind} file") from None

    @abstractmethod
    def _rows(self, t: TensorT, r0: int, r1: int) -> bytes:
        """Stored bytes of rows ``[r0, r1)`` of tensor ``t`` (1-D tensors have one row)."""

    @abstractmethod
    def _step(self, t: TensorT) -> int:
        """Rows generated per batch (bounds memory); batches start at multiples of it."""

    def read(self, start: int, end: int) -> bytes:
        self._check(start, end)
        out = bytearray()
        prefix = self._prefix
        if start < len(prefix):
            out += prefix[start : min(end, len(prefix))]
        pos = max(start, len(prefix))
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            t = self.tensors[i] if i >= 0 else None
            if t is None or pos >= t.offset + t.nbytes:  # padding before the next tensor (or the end)
                j = bisect.bisect_right(self._starts, pos)
                stop = min(end, self._starts[j] if j < len(self._starts) else self.size)
                out += b"\0" * (stop - pos)
                pos = stop
                continue
            stop = min(end, t.offset + t.nbytes)
            lo, hi = pos - t.offset, stop - t.offset
            rb = t.row_bytes
            first, last = lo // rb, -(-hi // rb)
            step = self._step(t)
            r = first
            while r < last:
                r_end = min(last, (r // step + 1) * step)
                data = self._rows(t, r, r_end)
                out += data[max(lo, r * rb) - r * rb : min(hi, r_end * rb) - r * rb]
                r = r_end
            pos = stop
        return bytes(out)
