"""Range handling: the parser table, then raw httpx2 requests against /resolve and the CDN."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2
import pytest

from monitor.localhub import LocalHub, write_repo
from monitor.localhub.ranges import ByteRange, RangeNotSatisfiableError, content_range, parse_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=10-10", (10, 11)),
        ("bytes=990-", (990, 1000)),
        ("bytes=990-5000", (990, 1000)),  # end clamped
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),  # suffix longer than the file = whole file, still 206
        (" bytes = 5 - 9 ", (5, 10)),
        ("BYTES=0-0", (0, 1)),
        # ignored (answer 200 with the whole file)
        ("bytes=0-1,5-6", None),
        ("items=0-10", None),
        ("bytes=9-5", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes 0-10", None),
        ("bytes=0-" + "9" * 30, None),
    ],
)
def test_parse_range_table(header: str | None, expected: tuple[int, int] | None) -> None:
    got = parse_range(header, SIZE)
    assert (None if got is None else (got.start, got.end)) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=1000-", 1000), ("bytes=5000-6000", 1000), ("bytes=-0", 1000), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


def test_content_range_is_inclusive() -> None:
    assert content_range(ByteRange(0, 100, 1000)) == "bytes 0-99/1000"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> LocalHub:
    root = tmp_path_factory.mktemp("hub")
    data = os.urandom(300_000)
    write_repo(root, "acme/r", {"weights.bin": data, "notes.txt": b"0123456789" * 10, "empty.txt": b""})
    with LocalHub(root) as hub:
        hub.data = data  # type: ignore[attr-defined]
        yield hub


@pytest.fixture
def client() -> httpx2.Client:
    with httpx2.Client(follow_redirects=False, timeout=10) as client:
        yield client


def _cdn(hub: LocalHub, client: httpx2.Client) -> str:
    r = client.head(f"{hub.endpoint}/acme/r/resolve/main/weights.bin")
    assert r.status_code == 302
    return r.headers["location"]


@pytest.mark.parametrize("where", ["direct", "cdn"])
def test_range_forms_over_http(hub: LocalHub, client: httpx2.Client, where: str) -> None:
    data: bytes = hub.data  # type: ignore[attr-defined]
    url = _cdn(hub, client) if where == "cdn" else f"{hub.endpoint}/acme/r/resolve/main/notes.txt"
    body = data if where == "cdn" else b"0123456789" * 10
    n = len(body)
    cases = {"bytes=5-14": (5, 15), "bytes=90-": (90, n), "bytes=-7": (n - 7, n), f"bytes=0-{n + 50}": (0, n)}
    for header, (a, b) in cases.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {a}-{b - 1}/{n}"
        assert r.headers["content-length"] == str(b - a)
        assert r.content == body[a:b]
        assert r.headers["accept-ranges"] == "bytes"
        assert "content-encoding" not in r.headers
    full = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert full.status_code == 200
    assert full.content == body
    assert full.headers["content-length"] == str(n)
    assert "content-encoding" not in full.headers
    multi = client.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200
    assert multi.content == body
    bad = client.get(url, headers={"Range": f"bytes={n}-"})
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{n}"


def test_head_announces_length_without_body(hub: LocalHub, client: httpx2.Client) -> None:
    r = client.head(f"{hub.endpoint}/acme/r/resolve/main/notes.txt", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206
    assert r.headers["content-length"] == "10"
    assert r.content == b""
    assert r.headers["etag"].startswith('"')
    assert len(r.headers["x-repo-commit"]) == 40


def test_empty_file(hub: LocalHub, client: httpx2.Client) -> None:
    url = f"{hub.endpoint}/acme/r/resolve/main/empty.txt"
    assert client.get(url).content == b""
    assert client.get(url).headers["content-length"] == "0"
    r = client.get(url, headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */0"


def test_redirect_carries_metadata_and_no_xet(hub: LocalHub, client: httpx2.Client) -> None:
    r = client.head(f"{hub.endpoint}/acme/r/resolve/main/weights.bin")
    assert r.status_code == 302
    assert r.headers["location"].startswith(f"{hub.cdn_origin}/cdn/")
    assert r.headers["x-linked-size"] == "300000"
    assert r.headers["x-linked-etag"] == r.headers["etag"]
    assert not any(h.lower().startswith("x-xet") for h in r.headers)


def test_no_redirect_mode_serves_lfs_directly(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/r", {"w.safetensors": b"\0" * 64})
    with LocalHub(tmp_path, cdn_redirect=False) as hub:
        r = httpx2.get(f"{hub.endpoint}/acme/r/resolve/main/w.safetensors", headers={"Range": "bytes=8-15"})
        assert r.status_code == 206
        assert r.content == b"\0" * 8
        assert r.headers["x-linked-size"] == "64"
        assert not hub.log.find(bucket="cdn")


def test_large_range_streams(tmp_path: Path) -> None:
    big = tmp_path / "src.bin"
    with open(big, "wb") as fh:
        fh.truncate(20 * 1024 * 1024 + 3)  # sparse: 20 MiB of zeros without writing them
        fh.seek(12 * 1024 * 1024)
        fh.write(b"marker")
    write_repo(tmp_path / "root", "acme/big", {"blob.bin": big})
    with LocalHub(tmp_path / "root", cdn_redirect=False) as hub:
        digest = hashlib.sha256()
        with httpx2.stream("GET", f"{hub.endpoint}/acme/big/resolve/main/blob.bin") as r:
            assert r.headers["content-length"] == str(20 * 1024 * 1024 + 3)
            for chunk in r.iter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
