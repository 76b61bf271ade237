"""The request and response values passed between the HTTP transport and the hub's endpoints.

The endpoints (`monitor.localhub.app`) are plain functions from a `Request` to a `Response`; the
transport (`monitor.localhub.server`) owns sockets, fault injection, rate limits and the request log.
Keeping the two apart lets a fault rule rewrite a finished response (a wrong ``Content-Range``, a
moved ``X-Repo-Commit``) without the endpoints knowing faults exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "BodyStream",
    "Request",
    "Response",
    "error_response",
    "iso_ms",
    "json_response",
    "parse_iso_ms",
]

STREAM_CHUNK = 1024 * 1024
"""Bytes per read/write while streaming a file body; files can be many GB and never sit in memory."""


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request.

    Attributes:
        method (`str`): ``GET``, ``HEAD``, ``POST``...
        raw_path (`str`): the path as sent, still percent-encoded (routing splits it before decoding,
            because a revision such as ``refs%2Fpr%2F1`` is one segment).
        query (`dict[str, list[str]]`): decoded query parameters, repeated keys kept in order.
        query_string (`str`): the raw query string (for ``Link`` URLs that must repeat every parameter).
        headers (`dict[str, str]`): request headers with lower-case names.
        body (`bytes`): request body (only read for the few POST endpoints, with a size limit).
        token (`str | None`): the bearer token sent, if any. Never logged.
    """

    method: str
    raw_path: str
    query: dict[str, list[str]]
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    token: str | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        """Last value of a query parameter, or ``default``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        """A boolean query parameter as huggingface_hub sends it (``true``/``True``/``1``)."""
        value = self.param(name)
        return value is not None and value.strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class BodyStream:
    """A byte range of a (possibly huge or virtual) file, produced chunk by chunk.

    Attributes:
        read (`Callable[[int, int], bytes]`): returns bytes ``[start, end)`` of the file.
        start (`int`), end (`int`): the half-open range to send.
        close (`Callable[[], None] | None`): releases the open file; the transport calls it once the
            answer is written (or abandoned).
    """

    read: Callable[[int, int], bytes]
    start: int
    end: int
    close: Callable[[], None] | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    def chunks(self, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        pos = self.start
        while pos < self.end:
            stop = min(pos + chunk_size, self.end)
            data = self.read(pos, stop)
            if len(data) != stop - pos:
                raise OSError(f"short read at {pos}: wanted {stop - pos} bytes, got {len(data)}")
            yield data
            pos = stop


@dataclass
class Response:
    """An HTTP response before it is written.

    Exactly one of `body` and `stream` carries the payload; `content_length` is what the headers
    announce, which HEAD responses keep while sending nothing.

    Attributes:
        status (`int`): HTTP status code.
        headers (`list[tuple[str, str]]`): headers in order (names as HF spells them).
        body (`bytes`): small in-memory payload (JSON, error text).
        stream (`BodyStream | None`): file payload, streamed.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: BodyStream | None = None

    @property
    def content_length(self) -> int:
        return self.stream.length if self.stream is not None else len(self.body)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def set_header(self, name: str, value: str) -> None:
        """Replace every header called ``name`` by one with ``value``."""
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        self.headers.append((name, value))


def json_response(obj: Any, *, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON response (compact, UTF-8) with ``Content-Type: application/json``."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hdrs = [("Content-Type", "application/json; charset=utf-8"), *(headers or [])]
    return Response(status, hdrs, body)


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """An error the way the Hub sends it: ``{"error": message}`` plus ``X-Error-Code``/``X-Error-Message``.

    huggingface_hub maps ``X-Error-Code`` to typed exceptions (``RepoNotFound``, ``RevisionNotFound``,
    ``EntryNotFound``, ``GatedRepo``) and shows ``X-Error-Message`` in the exception text.
    """
    hdrs: list[tuple[str, str]] = []
    if code is not None:
        hdrs.append(("X-Error-Code", code))
    hdrs.append(("X-Error-Message", _header_safe(message)))
    hdrs.extend(headers or [])
    return json_response({"error": message}, status=status, headers=hdrs)


def _header_safe(text: str) -> str:
    """Header values must be one line of latin-1; error messages may quote user input."""
    flat = " ".join(text.split())
    return flat.encode("latin-1", "replace").decode("latin-1")[:1000]


def iso_ms(epoch_ms: int) -> str:
    """``2025-11-04T08:25:31.000Z``: the Hub's timestamp format (UTC, milliseconds)."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_iso_ms(text: str) -> int:
    """Parse an ISO-8601 timestamp (``Z`` or offset; naive means UTC) into epoch milliseconds.

    Raises:
        `ValueError`: not an ISO-8601 timestamp.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 timestamp string, got {type(text).__name__}")
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)
