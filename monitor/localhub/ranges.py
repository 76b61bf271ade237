"""HTTP ``Range`` requests (RFC 9110 §14) for the files the hub serves.

Supported: one range per request, in the three forms clients send: ``bytes=a-b``, ``bytes=a-`` and the
suffix ``bytes=-n``. Behaviour chosen for everything else, documented in ``docs/localhub.md``:

* a syntactically invalid header, a unit other than ``bytes``, ``a > b``, or a *multi-range* request
  (``bytes=0-1,5-6``) is **ignored**: the answer is 200 with the whole file, which is what S3-style
  storage does and what a careful client must detect (a 200 to a ranged request means "Range ignored");
* a range that starts at or beyond the end of the file, or ``bytes=-0``, is **unsatisfiable**: 416 with
  ``Content-Range: bytes */<size>`` (also for every range of an empty file);
* an end beyond the file is clamped to the last byte, and a suffix longer than the file means the
  whole file, both answered with 206.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiableError", "content_range", "parse_range"]

_SPEC = re.compile(r"^\s*(\d{0,20})\s*-\s*(\d{0,20})\s*$")


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable byte range, half-open: bytes ``[start, end)`` of a file of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start


class RangeNotSatisfiableError(Exception):
    """The Range header is well-formed but selects no byte of the file (answer 416)."""

    def __init__(self, header: str, size: int) -> None:
        super().__init__(f"range {header!r} is not satisfiable for a file of {size} bytes")
        self.size = size


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Interpret a ``Range`` header for a file of ``size`` bytes.

    Returns:
        A `ByteRange` to answer with 206, or ``None`` to answer 200 with the whole file (no header, or
        a header we ignore; see the module docstring).

    Raises:
        `RangeNotSatisfiableError`: answer 416.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _SPEC.match(spec)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiableError(header, size)
        return ByteRange(max(0, size - n), size, size)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiableError(header, size)
    end = size if not last else min(int(last) + 1, size)
    return ByteRange(start, end, size)


def content_range(rng: ByteRange) -> str:
    """The ``Content-Range`` value of a 206 answer (inclusive end on the wire)."""
    return f"bytes {rng.start}-{rng.end - 1}/{rng.size}"
