"""Wire helpers: timestamps, error responses (header-safe), and the hub not letting input reach headers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from monitor.localhub import LocalHub, write_repo
from monitor.localhub.wire import BodyStream, error_response, iso_ms, json_response, parse_iso_ms


def test_timestamps_roundtrip() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert parse_iso_ms("2023-11-14T22:13:20.123Z") == 1_700_000_000_123
    assert parse_iso_ms("2023-11-14T23:13:20.123+01:00") == 1_700_000_000_123
    assert parse_iso_ms("2023-11-14T22:13:20") == 1_700_000_000_000  # naive means UTC
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_iso_ms("last tuesday")


def test_error_response_is_header_safe() -> None:
    r = error_response(404, "bad\r\nSet-Cookie: x=1 \u2603", code="EntryNotFound")
    assert r.header("X-Error-Message") == "bad Set-Cookie: x=1 ?"
    assert r.header("X-Error-Code") == "EntryNotFound"
    assert r.body == '{"error":"bad\\r\\nSet-Cookie: x=1 \u2603"}'.encode()
    assert json_response([1], status=201).header("content-type") == "application/json; charset=utf-8"


def test_body_stream_chunks_and_short_reads() -> None:
    data = bytes(range(256)) * 10
    stream = BodyStream(lambda a, b: data[a:b], 5, 2000)
    assert b"".join(stream.chunks(chunk_size=300)) == data[5:2000]
    assert stream.length == 1995
    short = BodyStream(lambda a, b: data[a : b - 1], 0, 10)
    with pytest.raises(OSError, match="short read"):
        list(short.chunks())


def test_crlf_in_a_request_cannot_inject_headers(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    with LocalHub(tmp_path) as hub:
        host, port = hub.endpoint.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"GET /api/models/acme/m/revision/x%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\n"
                b"Host: h\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 404")
        assert b"\r\nSet-Cookie" not in head
