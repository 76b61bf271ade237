"""Drive every parser on arbitrary bytes: the contract fuzzers (hypothesis, atheris) check.

The contract: for any input, each parser either returns a parsed file whose reads also succeed or
raise `FormatError`, or raises `FormatError` itself — never `IndexError`, `struct.error`,
`UnicodeDecodeError`, `MemoryError`, `RecursionError` or a hang. `MemorySource` is an in-memory
`ByteSource` so fuzzers need no files. With atheris installed (``pip install -e .[fuzz]``)::

    python -m monitor.formats.fuzz -atheris_runs=100000
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np

from monitor.errors import FormatError
from monitor.formats.gguf import open_gguf
from monitor.formats.rows import RowFile
from monitor.formats.safetensors import open_safetensors
from monitor.formats.torchzip import open_torch
from monitor.remote.source import ReadStats, Span, check_span

__all__ = ["PARSERS", "MemorySource", "exercise"]

PARSERS: dict[str, Callable[[MemorySource], RowFile]] = {
    "safetensors": open_safetensors,
    "gguf": open_gguf,
    "torch": open_torch,
}
"""Every parser, by format name."""
_MAX_DECODE_BYTES = 1 << 20


class MemorySource:
    """A `ByteSource` over bytes in memory (for fuzzing and for tests of crafted files)."""

    def __init__(self, data: bytes, *, path: str = "memory.bin") -> None:
        self.path = path
        self.size = len(data)
        self._data = bytes(data)
        self.stats = ReadStats()

    def read(self, start: int, end: int) -> bytes:
        check_span(self.path, self.size, start, end)
        self.stats.add(self.path, end - start)
        return self._data[start:end]

    def read_many(self, spans: Sequence[Span]) -> list[bytes]:
        return [self.read(s, e) for s, e in spans]


def exercise(data: bytes, fmt: str) -> RowFile | None:
    """Parse ``data`` as ``fmt`` and decode the first and last row of every small tensor.

    Returns:
        The parsed file, or ``None`` when it was rejected with `FormatError` (the allowed outcome).
        Any other exception propagates: that is a bug.
    """
    try:
        parsed = PARSERS[fmt](MemorySource(data, path=f"fuzz.{fmt}"))
        for name, info in parsed.tensors.items():
            if info.nbytes > _MAX_DECODE_BYTES:
                continue
            n = parsed.layout(name).n_rows
            if n:
                parsed.read_rows(name, np.array([0, n - 1]))
                parsed.read_rows(name, np.array([0, n - 1]), native=parsed.layout(name).codec.dense)
        return parsed
    except FormatError:
        return None


def _atheris_main() -> None:  # pragma: no cover - needs atheris
    import atheris

    def one(data: bytes) -> None:
        for fmt in PARSERS:
            exercise(data, fmt)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _atheris_main()
