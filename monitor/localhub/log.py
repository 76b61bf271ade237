"""The hub's request log: what every test asserts on (requests made, bytes sent, auth leaks).

One `RequestRecord` per request, appended just before the answer's headers leave the server (so a
client that has its answer always finds the record), and corrected if the body then breaks off.
The log never holds a token or any other header value except ``Range``; ``auth`` only says whether
an ``Authorization`` header arrived, which is how tests prove that the credential never reaches
the CDN.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

__all__ = ["RequestLog", "RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the hub saw and answered it.

    Attributes:
        method (`str`): HTTP method.
        path (`str`): URL path, percent-decoded.
        query (`str`): raw query string (``""`` when none).
        range (`str | None`): the ``Range`` header as sent.
        status (`int`): status sent; ``0`` when the connection was reset without an answer.
        bytes_sent (`int`): body bytes actually written (less than announced when truncated).
        bucket (`str`): ``api``, ``resolvers``, ``cdn`` or ``other``.
        t (`float`): wall-clock time (epoch seconds) when the request arrived.
        auth (`bool`): whether an ``Authorization`` header was present.
        host (`str`): the ``Host`` header (tells the API origin from the CDN origin).
        fault (`str | None`): names of the fault rules that fired, comma-separated.
    """

    method: str
    path: str
    query: str
    range: str | None
    status: int
    bytes_sent: int
    bucket: str
    t: float
    auth: bool = False
    host: str = ""
    fault: str | None = None


class RequestLog(Sequence[RequestRecord]):
    """A thread-safe, append-only list of `RequestRecord` (indexing and iteration see a snapshot)."""

    def __init__(self) -> None:
        self._items: list[RequestRecord] = []
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._items.append(record)

    def replace(self, old: RequestRecord, new: RequestRecord) -> None:
        """Swap a record for its corrected version (same request, e.g. fewer bytes than announced)."""
        with self._lock:
            for i in range(len(self._items) - 1, -1, -1):
                if self._items[i] is old:
                    self._items[i] = new
                    return  # not found: the log was cleared since; keep it cleared

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        with self._lock:
            return self._items[index]

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())

    def find(
        self, path: str | None = None, *, method: str | None = None, bucket: str | None = None
    ) -> list[RequestRecord]:
        """Records whose path matches the regex ``path`` (searched), method and bucket, in order."""
        regex = re.compile(path) if path is not None else None
        return [
            r
            for r in self.snapshot()
            if (regex is None or regex.search(r.path))
            and (method is None or r.method == method.upper())
            and (bucket is None or r.bucket == bucket)
        ]

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} records)"
