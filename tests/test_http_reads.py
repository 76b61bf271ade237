"""Pinned ranged reads (HttpRangeSource / HubFileSet) over real HTTP against LocalHub on 127.0.0.1.

Covers the CDN redirect (and that the token never reaches the CDN), storage-URL caching and
refresh after expiry, coalescing and concurrency, the byte budget, every fault LocalHub can
inject, and — through `httpx2.MockTransport` — protocol violations no honest server produces.
The last test is a measurement (bytes, requests, seconds) rather than a timed assertion.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest

from monitor.errors import (
    BudgetExceeded,
    CommitMoved,
    FormatError,
    GatedRepo,
    HubError,
    NotFound,
    RangeIgnored,
    RateLimited,
    TransientHubError,
)
from monitor.hubs.huggingface import HuggingFaceSource
from monitor.hubs.ratelimit import HubRateLimiter
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.remote.coalesce import CoalescePolicy, plan_reads
from monitor.remote.http import HttpRangeSource, parse_content_range, resolve_url
from monitor.remote.hubfiles import HubFileSet
from monitor.remote.retry import RetryPolicy
from monitor.remote.source import ByteBudget, ByteSource, FileEntry, FileSet, ReadStats
from monitor.remote.transport import HttpSettings, HubHttpClient
from monitor.validate import RedirectPolicy

TOKEN = "hf_reads_secret_token"
RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_wait_s=5.0)
FAST = HttpSettings(retry=RETRY)
MINILM = "acme/minilm"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("reads")
    write_repo(path, MINILM, {WEIGHTS: minilm_dir / WEIGHTS, "config.json": minilm_dir / "config.json"})
    write_repo(path, "acme/small", {"notes.txt": bytes(range(256)) * 20})
    write_repo(path, "gate/kept", {WEIGHTS: b"\x05" * 4096}, sidecar={"gated": "auto"})
    return path


@pytest.fixture(scope="module")
def hub(root: Path) -> Iterator[LocalHub]:
    with LocalHub(root, token=TOKEN) as server:
        yield server


@pytest.fixture
def fresh(hub: LocalHub) -> LocalHub:
    hub.faults.clear()
    hub.clear_log()
    return hub


@pytest.fixture
def source(fresh: LocalHub) -> Iterator[HuggingFaceSource]:
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=FAST) as src:
        yield src


@pytest.fixture(scope="module")
def local_bytes(minilm_dir: Path) -> bytes:
    return (minilm_dir / WEIGHTS).read_bytes()


def open_weights(source: HuggingFaceSource, hub: LocalHub, *, budget: int | None = None, repo: str = MINILM):
    snap = source.snapshot(repo)
    files = source.open_files(snap, budget=budget)
    hub.clear_log()
    return files, files.open(WEIGHTS if repo != "acme/small" else "notes.txt")


def header_rows(data: bytes, tensor: str, rows: list[int]) -> list[tuple[int, int]]:
    """Absolute spans of some rows of a 2-D tensor in a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    info = header[tensor]
    width = info["shape"][1] * {"F32": 4, "F16": 2, "BF16": 2}[info["dtype"]]
    base = 8 + n + info["data_offsets"][0]
    return [(base + r * width, base + (r + 1) * width) for r in rows]


# -- the happy path -------------------------------------------------------------------------------


def test_read_through_cdn_redirect_without_leaking_the_token(source, fresh, local_bytes):
    files, f = open_weights(source, fresh)
    assert isinstance(files, FileSet)
    assert isinstance(f, ByteSource)
    assert f.size == len(local_bytes)
    assert f.read(0, 8) == local_bytes[:8]
    assert f.read(1000, 5000) == local_bytes[1000:5000]
    log = fresh.log.snapshot()
    resolves = [r for r in log if r.bucket == "resolvers"]
    cdn = [r for r in log if r.bucket == "cdn"]
    assert len(resolves) == 1  # the signed storage URL is reused for the second read
    assert resolves[0].status == 302
    assert resolves[0].auth
    assert f"/resolve/{files.commit}/" in resolves[0].path
    assert "/resolve/main/" not in resolves[0].path
    assert [r.range for r in cdn] == ["bytes=0-7", "bytes=1000-4999"]
    assert not any(r.auth for r in cdn)
    assert all(r.host.startswith("localhost:") for r in cdn)
    assert files.stats.snapshot() == {"bytes_read": 4008, "requests": 3, "by_file": {WEIGHTS: 4008}}
    assert files.budget.used == 4008


def test_small_files_are_served_by_the_hub_directly(source, fresh, root):
    files, f = open_weights(source, fresh, repo="acme/small")
    data = (root / "acme/small/notes.txt").read_bytes()
    assert f.read(10, 300) == data[10:300]
    assert [(r.bucket, r.status, r.auth) for r in fresh.log] == [("resolvers", 206, True)]
    assert files.stats.requests == 1


def test_open_reuses_sources_and_rejects_unknown_files(source, fresh):
    files, f = open_weights(source, fresh)
    assert files.open(WEIGHTS) is f
    with pytest.raises(NotFound, match="no file"):
        files.open("nope.bin")
    assert "HubFileSet" in repr(files)
    assert "HttpRangeSource" in repr(f)


def test_span_checks_and_empty_reads(source, fresh):
    _files, f = open_weights(source, fresh)
    assert f.read(5, 5) == b""
    assert f.read_many([(0, 0), (7, 7)]) == [b"", b""]
    with pytest.raises(FormatError, match="outside the file"):
        f.read(f.size - 4, f.size + 4)
    with pytest.raises(FormatError):
        f.read(-1, 4)
    assert len(fresh.log) == 0


def test_coalescing_request_counts(source, fresh, local_bytes):
    _files, f = open_weights(source, fresh)
    f.read(0, 8)  # warm the storage URL
    fresh.clear_log()
    dense = header_rows(local_bytes, "embeddings.word_embeddings.weight", [3 * i for i in range(32)])
    out = f.read_many(dense)
    assert out == [local_bytes[s:e] for s, e in dense]
    assert len(fresh.log) == 1  # gaps of two rows between rows: one request
    fresh.clear_log()
    sparse = header_rows(local_bytes, "embeddings.word_embeddings.weight", [500 * i for i in range(16)])
    out = f.read_many(sparse)
    assert out == [local_bytes[s:e] for s, e in sparse]
    assert len(fresh.log) == 16
    assert sorted(r.range for r in fresh.log) == sorted(f"bytes={s}-{e - 1}" for s, e in sparse)


def test_large_reads_are_split(fresh, local_bytes):
    settings = HttpSettings(retry=RETRY, coalesce=CoalescePolicy(max_request=1 << 20))
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=settings) as src:
        files, f = open_weights(src, fresh)
        data = f.read(0, 5_000_000)
    assert data == local_bytes[:5_000_000]
    assert len(fresh.log.find(bucket="cdn")) == 5
    assert files.stats.bytes_read == 5_000_000


@pytest.mark.parametrize(("limit", "floor"), [(2, 0.85), (6, 0.0)])
def test_per_host_concurrency_limit(fresh, local_bytes, limit, floor):
    settings = HttpSettings(retry=RETRY, per_host_concurrency=limit, workers=8)
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=settings) as src:
        _files, f = open_weights(src, fresh)
        f.read(0, 8)
        fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.delay(0.3)))
        spans = [(i * 1_000_000, i * 1_000_000 + 100) for i in range(6)]
        started = time.monotonic()
        assert f.read_many(spans) == [local_bytes[s:e] for s, e in spans]
        elapsed = time.monotonic() - started
    arrivals = sorted(r.t for r in fresh.log.find(bucket="cdn"))[1:]
    assert len(arrivals) == 6
    if limit == 2:
        assert elapsed >= floor  # three waves of two
        assert all(b - a >= 0.25 for a, b in zip(arrivals, arrivals[2:], strict=False))
    else:
        assert elapsed < 0.85  # all six at once


# -- budget ----------------------------------------------------------------------------------------


def test_budget_breach_costs_nothing(source, fresh):
    files, f = open_weights(source, fresh, budget=1000)
    with pytest.raises(BudgetExceeded) as info:
        f.read_many([(0, 600), (10_000, 10_600)])
    assert info.value.budget == 1000
    assert len(fresh.log) == 0
    assert files.stats.bytes_read == 0
    assert files.budget.used == 0
    assert f.read(0, 1000)  # exactly the budget is fine
    with pytest.raises(BudgetExceeded):
        f.read(0, 1)


def test_tight_budget_drops_gap_bytes(source, fresh, local_bytes):
    files, f = open_weights(source, fresh, budget=200)
    spans = [(100, 200), (250, 350)]  # merged plan would read 250 bytes
    assert f.read_many(spans) == [local_bytes[100:200], local_bytes[250:350]]
    assert files.budget.used == 200
    assert sorted(r.range for r in fresh.log.find(bucket="cdn")) == ["bytes=100-199", "bytes=250-349"]


def test_budget_is_shared_by_all_files_of_a_repo(source, fresh):
    snap = source.snapshot(MINILM)
    files = source.open_files(snap, budget=600)
    files.open(WEIGHTS).read(0, 400)
    with pytest.raises(BudgetExceeded):
        files.open("config.json").read(0, 300)
    assert files.stats.by_file == {WEIGHTS: 400}


# -- faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [FaultAction.status(500), FaultAction.status(503, headers={"Retry-After": "0"}), FaultAction.reset()],
    ids=["500", "503", "reset"],
)
def test_transient_storage_faults_are_retried(source, fresh, local_bytes, action):
    files, f = open_weights(source, fresh)
    rule = fresh.faults.add(FaultRule("GET", r"^/cdn/", action, times=1))
    assert f.read(4096, 8192) == local_bytes[4096:8192]
    assert rule.fired == 1
    assert files.stats.bytes_read == 4096


def test_transient_faults_give_up_after_max_attempts(source, fresh):
    files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.status(502)))
    with pytest.raises(TransientHubError, match="storage answered 502"):
        f.read(0, 100)
    assert len(fresh.log.find(bucket="cdn")) == RETRY.max_attempts
    assert files.stats.bytes_read == 0


def test_truncated_body_is_retried_and_charged(source, fresh, local_bytes):
    files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.truncate(300), times=1))
    assert f.read(0, 1000) == local_bytes[:1000]
    assert files.stats.bytes_read == 1300  # the partial body was real egress
    assert files.budget.used == 1300
    assert [r.bytes_sent for r in fresh.log.find(bucket="cdn")] == [300, 1000]


def test_partial_body_retry_respects_the_budget(source, fresh):
    files, f = open_weights(source, fresh, budget=1100)
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.truncate(300), times=1))
    with pytest.raises(BudgetExceeded):
        f.read(0, 1000)
    assert len(fresh.log.find(bucket="cdn")) == 1
    assert files.stats.bytes_read == 300


def test_wrong_content_range(source, fresh, local_bytes):
    _files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.wrong_content_range(16), times=1))
    assert f.read(100, 200) == local_bytes[100:200]
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.wrong_content_range(-1)))
    with pytest.raises(TransientHubError, match="Content-Range"):
        f.read(300, 400)


def test_ignored_range_is_aborted_unread(source, fresh, local_bytes):
    files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.ignore_range()))
    with pytest.raises(RangeIgnored, match="answered 200"):
        f.read(0, 100)
    assert files.stats.bytes_read == 0
    time.sleep(0.2)  # let the server notice the closed connection and log it
    (record,) = fresh.log.find(bucket="cdn")
    assert record.status == 200
    assert record.bytes_sent < len(local_bytes) // 2


def test_commit_moved_on_resolve(source, fresh):
    _files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"/resolve/", FaultAction.commit_moved()))
    with pytest.raises(CommitMoved, match="instead of the pinned one"):
        f.read(0, 8)
    _files, small = open_weights(source, fresh, repo="acme/small")
    fresh.faults.add(FaultRule("GET", r"/resolve/", FaultAction.commit_moved()))
    with pytest.raises(CommitMoved):
        small.read(0, 8)


def test_a_pinned_commit_rewritten_away_mid_read_is_commit_moved(tmp_path):
    """The repo got a new commit (and the old one is gone) between two reads of a scan: `CommitMoved`, so the
    worker scans the new head, not `NotFound` ("the upload no longer exists")."""
    write_repo(tmp_path, "acme/rewritten", {"notes.txt": b"a" * 4096})
    with (
        LocalHub(tmp_path, token=TOKEN) as hub,
        HuggingFaceSource("hf", hub.endpoint, TOKEN, http=FAST) as src,
    ):
        snap = src.snapshot("acme/rewritten")
        f = src.open_files(snap, budget=None).open("notes.txt")
        assert f.read(0, 8) == b"a" * 8
        write_repo(tmp_path, "acme/rewritten", {"notes.txt": b"b" * 4096})
        with pytest.raises(CommitMoved, match=r"RevisionNotFound.*rewritten since the snapshot"):
            f.read(8, 16)


def test_a_storage_connection_to_a_refused_address_is_dropped(source, fresh):
    """DNS rebinding: the storage name resolved to a public address when the redirect was checked, but the
    connection went to a loopback address of a hub that is not on loopback. Nothing of the answer is read."""
    snap = source.snapshot(MINILM)

    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]  # the hub and its storage look public to the redirect check

    policy = RedirectPolicy.for_endpoint(fresh.endpoint, resolve=rebinding)
    assert not policy.hub_on_loopback
    with HubHttpClient(fresh.endpoint, token=TOKEN, limiter=None, redirects=policy, settings=FAST) as client:
        f = HttpRangeSource(
            client,
            repo_id=MINILM,
            commit=snap.commit,
            entry=snap.files[WEIGHTS],
            stats=ReadStats(),
            budget=ByteBudget(None),
        )
        with pytest.raises(
            HubError, match=r"refused: the connection went to 127\.0\.0\.1, a loopback address"
        ):
            f.read(0, 8)
    assert [r.bucket for r in fresh.log].count("cdn") == 1  # one request reached it, its body was not read
    # the same read through the default policy (the hub is on loopback, so is its CDN) works
    files = source.open_files(snap, budget=None)
    assert len(files.open(WEIGHTS).read(0, 8)) == 8


def test_listed_size_must_match(source, fresh):
    snap = source.snapshot(MINILM)
    entry = snap.files[WEIGHTS]
    lying = FileEntry(entry.path, entry.size - 1, entry.sha256, entry.blob_id)
    files = HubFileSet(
        type(snap)(hub=snap.hub, repo_id=snap.repo_id, commit=snap.commit, files={WEIGHTS: lying}),
        source._http,
        budget=None,
    )
    with pytest.raises(CommitMoved, match="reports"):
        files.open(WEIGHTS).read(0, 8)


def test_not_found_mid_read(source, fresh):
    _files, f = open_weights(source, fresh)
    f.read(0, 8)
    fresh.faults.add(
        FaultRule("GET", r"^/cdn/", FaultAction.status(404, headers={"X-Error-Code": "NoSuchKey"}))
    )
    with pytest.raises(NotFound, match="storage answered 404"):
        f.read(8, 16)
    _files, g = open_weights(source, fresh)
    fresh.faults.add(
        FaultRule("GET", r"/resolve/", FaultAction.status(404, headers={"X-Error-Code": "EntryNotFound"}))
    )
    with pytest.raises(NotFound, match="EntryNotFound"):
        g.read(0, 8)


def test_gated_files_need_the_token(fresh):
    with HuggingFaceSource("hf", fresh.endpoint, None, http=FAST) as anon:
        snap = anon.snapshot("gate/kept")
        with pytest.raises(GatedRepo, match="GatedRepo"):
            anon.open_files(snap, budget=None).open(WEIGHTS).read(0, 8)
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=FAST) as src:
        snap = src.snapshot("gate/kept")
        assert src.open_files(snap, budget=None).open(WEIGHTS).read(0, 8) == b"\x05" * 8


def test_429_on_resolve_waits_in_the_limiter(source, fresh, local_bytes):
    _files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"/resolve/", FaultAction.rate_limited(1, bucket="resolvers"), times=1))
    started = time.monotonic()
    assert f.read(0, 64) == local_bytes[:64]
    assert time.monotonic() - started >= 0.9
    state = source.limiter.state("resolvers")
    assert state.hub_429s == 1
    assert state.granted == 2


def test_429_beyond_the_wait_budget_raises(source, fresh):
    _files, f = open_weights(source, fresh)
    fresh.faults.add(FaultRule("GET", r"/resolve/", FaultAction.rate_limited(300, bucket="resolvers")))
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        f.read(0, 64)
    assert time.monotonic() - started < 1
    assert info.value.retry_after_s == pytest.approx(300, abs=1)
    assert len(fresh.log) == 1


def test_expired_signed_url_is_refreshed(root, local_bytes):
    with LocalHub(root, token=TOKEN, cdn_url_ttl_s=1) as short:
        with HuggingFaceSource("hf", short.endpoint, TOKEN, http=FAST) as src:
            _files, f = open_weights(src, short)
            assert f.read(0, 8) == local_bytes[:8]
            time.sleep(2.1)
            assert f.read(8, 16) == local_bytes[8:16]
        statuses = [(r.bucket, r.status) for r in short.log]
    assert statuses == [
        ("resolvers", 302),
        ("cdn", 206),
        ("cdn", 403),  # the cached URL expired
        ("resolvers", 302),
        ("cdn", 206),
    ]


def test_storage_refusing_fresh_urls_is_an_error(root):
    with (
        LocalHub(root, token=TOKEN, cdn_url_ttl_s=-10) as broken,
        HuggingFaceSource("hf", broken.endpoint, TOKEN, http=FAST) as src,
    ):
        _files, f = open_weights(src, broken)
        with pytest.raises(HubError, match="storage refused"):
            f.read(0, 8)


def test_stop_event_abandons_retries(fresh):
    stop = threading.Event()
    with HuggingFaceSource(
        "hf",
        fresh.endpoint,
        TOKEN,
        http=HttpSettings(retry=RetryPolicy(max_attempts=10, base_delay_s=5, max_delay_s=5)),
        stop=stop,
    ) as src:
        _files, f = open_weights(src, fresh)
        fresh.faults.add(FaultRule("GET", r"/resolve/", FaultAction.status(503)))
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(TransientHubError):
            f.read(0, 8)
        assert time.monotonic() - started < 3


def test_concurrent_readers_share_one_file(source, fresh, local_bytes):
    _files, f = open_weights(source, fresh)
    spans = [(i * 7919, i * 7919 + 333) for i in range(40)]
    results: dict[int, bytes] = {}

    def reader(i: int) -> None:
        results[i] = f.read(*spans[i])

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(spans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == local_bytes[s:e] for i, (s, e) in enumerate(spans))


# -- protocol violations (in-process transport: no honest server sends these) ----------------------

COMMIT = "c" * 40
DATA = bytes(range(256)) * 64
SHA = hashlib.sha256(DATA).hexdigest()


def _public(host: str, port: int) -> list[str]:
    """The mock hosts (``hub.test``, ``cdn.test``) resolve to a public address, as real storage does."""
    return ["93.184.216.34"]


def _client(handler, **kwargs) -> HubHttpClient:
    kwargs.setdefault("redirects", RedirectPolicy.for_endpoint("https://hub.test", resolve=_public))
    return HubHttpClient(
        "https://hub.test",
        token=TOKEN,
        limiter=HubRateLimiter.default(authenticated=True),
        settings=FAST,
        transport=httpx2.MockTransport(handler),
        **kwargs,
    )


def _source(client: HubHttpClient, stats: ReadStats | None = None) -> HttpRangeSource:
    return HttpRangeSource(
        client,
        repo_id="acme/m",
        commit=COMMIT,
        entry=FileEntry(WEIGHTS, len(DATA), SHA),
        stats=stats or ReadStats(),
        budget=ByteBudget(None),
    )


def _range(request: httpx2.Request) -> tuple[int, int]:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["range"])
    assert m is not None
    return int(m[1]), int(m[2]) + 1


def _redirect(location: str = "https://cdn.test/blob?sig=x", **headers: str) -> httpx2.Response:
    base = {
        "location": location,
        "x-repo-commit": COMMIT,
        "x-linked-size": str(len(DATA)),
        "x-linked-etag": f'"{SHA}"',
    }
    return httpx2.Response(302, headers={**base, **headers})


def _partial(request: httpx2.Request, *, body: bytes | None = None, **headers: str) -> httpx2.Response:
    start, end = _range(request)
    base = {"content-range": f"bytes {start}-{end - 1}/{len(DATA)}", "etag": '"e1"'}
    return httpx2.Response(
        206, headers={**base, **headers}, content=iter([DATA[start:end] if body is None else body])
    )


def test_resolve_url_and_content_range_parsing():
    assert (
        resolve_url("https://h", "a/b", COMMIT, "dir/x y#.bin")
        == f"https://h/a/b/resolve/{COMMIT}/dir/x%20y%23.bin"
    )
    assert parse_content_range("bytes 0-9/100") == (0, 9, 100)
    assert parse_content_range("bytes 0-9/*") == (0, 9, None)
    for bad in (None, "", "bytes */100", "bytes 0-9", "items 0-9/100", "bytes 0-9/100, 20-29/100"):
        assert parse_content_range(bad) is None


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("ftp://cdn.test/blob", "only absolute http"),
        ("http://cdn.test/blob", "downgrade"),
        ("https://evil.test/blob", "not in the allowed storage hosts"),
    ],
)
def test_bad_redirects_are_not_followed(location, fragment):
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.host)
        return _redirect(location)

    with (
        _client(
            handler,
            redirects=RedirectPolicy.for_endpoint("https://hub.test", allowed_storage_hosts=["cdn.test"]),
        ) as client,
        pytest.raises(HubError, match=fragment),
    ):
        _source(client).read(0, 8)
    assert seen == ["hub.test"]


def test_redirect_loops_are_bounded():
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(307, headers={"location": request.url.path + "x"})

    with _client(handler) as client, pytest.raises(HubError, match="redirects"):
        _source(client).read(0, 8)


def test_same_origin_redirects_keep_auth_and_storage_never_gets_it():
    seen: list[tuple[str, bool]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append((request.url.host, "authorization" in request.headers))
        assert "hubsentry/" in request.headers["user-agent"]
        assert "hf_hub/" in request.headers["user-agent"]
        assert request.headers["accept-encoding"] == "identity"
        if request.url.path.startswith("/acme/m/"):
            return httpx2.Response(307, headers={"location": "/acme/renamed/resolve/x/model.safetensors"})
        if request.url.host == "hub.test":
            return _redirect()
        return _partial(request)

    with _client(handler) as client:
        assert _source(client).read(0, 8) == DATA[:8]
    assert seen == [("hub.test", True), ("hub.test", True), ("cdn.test", False)]


@pytest.mark.parametrize(
    ("respond", "error", "fragment"),
    [
        (
            lambda r: httpx2.Response(
                206, headers={"content-range": "bytes 0-7/16384"}, content=iter([DATA[:8]])
            ),
            HubError,
            "X-Repo-Commit",
        ),
        (
            lambda r: _redirect(**{"x-linked-etag": '"' + "f" * 64 + '"'}),
            CommitMoved,
            "differs from the listed SHA-256",
        ),
        (lambda r: _redirect(**{"x-linked-size": "5"}), CommitMoved, "reports '5' bytes"),
        (
            lambda r: (
                _redirect("https://cdn.test/b")
                if r.url.host == "hub.test"
                else _partial(r, body=gzip.compress(DATA[:8]), **{"content-encoding": "gzip"})
            ),
            HubError,
            "gzip",
        ),
        (
            lambda r: _redirect() if r.url.host == "hub.test" else _partial(r, body=DATA[:20]),
            TransientHubError,
            "more than the 8 bytes",
        ),
        (
            lambda r: _redirect() if r.url.host == "hub.test" else _partial(r, **{"content-length": "9"}),
            TransientHubError,
            "Content-Length",
        ),
        (
            lambda r: (
                _redirect()
                if r.url.host == "hub.test"
                else httpx2.Response(416, headers={"content-range": "bytes */4"})
            ),
            CommitMoved,
            "shorter",
        ),
        (
            lambda r: _redirect() if r.url.host == "hub.test" else httpx2.Response(403, text="denied"),
            HubError,
            "storage refused",
        ),
        (
            lambda r: httpx2.Response(403, headers={"x-error-code": "GatedRepo"}, text="gated"),
            GatedRepo,
            "gated",
        ),
        (lambda r: httpx2.Response(418, text="teapot"), HubError, "418"),
    ],
    ids=[
        "no-commit",
        "sha-mismatch",
        "size-mismatch",
        "gzip",
        "overlong",
        "content-length",
        "416",
        "storage-403",
        "gated",
        "other",
    ],
)
def test_protocol_violations(respond, error, fragment):
    with _client(respond) as client, pytest.raises(error, match=fragment) as info:
        _source(client).read(0, 8)
    assert TOKEN not in str(info.value)


def test_storage_etag_must_stay_stable():
    etags = iter(['"e1"', '"e2"'])

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "hub.test":
            return _redirect()
        return _partial(request, etag=next(etags))

    with _client(handler) as client:
        src = _source(client)
        src.read(0, 8)
        with pytest.raises(CommitMoved, match="ETag changed"):
            src.read(8, 16)


def test_storage_429_waits_for_retry_after():
    calls = {"cdn": 0}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "hub.test":
            return _redirect()
        calls["cdn"] += 1
        if calls["cdn"] == 1:
            return httpx2.Response(429, headers={"retry-after": "1"})
        return _partial(request)

    with _client(handler) as client:
        started = time.monotonic()
        assert _source(client).read(0, 8) == DATA[:8]
        assert time.monotonic() - started >= 0.9
        assert client.limiter is not None
        assert client.limiter.state("resolvers").hub_429s == 0  # storage is not the hub's bucket


def test_closed_client_refuses_reads():
    client = _client(lambda r: _redirect())
    client.close()
    with pytest.raises(HubError, match="closed"):
        _source(client).read(0, 8)
    assert "authenticated=True" in repr(client)
    assert TOKEN not in repr(client)


# -- measurement ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_measure_header_and_rows_from_a_large_file(tmp_path):
    """Bytes, requests and seconds to read a safetensors header and sampled rows over loopback.

    A 150 MiB Llama-like file (an embedding and four MLP layers, F32). The header is read in two
    requests (8-byte length, then the JSON), then 64 rows of each of 5 matrices, first one
    request per row (no coalescing) and then with the default coalescing. Numbers are printed
    (``pytest -s``) and quoted in docs/remote-reads.md; assertions only check correctness and
    counts, never speed.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((16384, 1024), dtype=np.float32)}
    for layer in range(4):
        tensors[f"model.layers.{layer}.mlp.up_proj.weight"] = rng.standard_normal(
            (2816, 1024), dtype=np.float32
        )
        tensors[f"model.layers.{layer}.mlp.down_proj.weight"] = rng.standard_normal(
            (1024, 2816), dtype=np.float32
        )
    repo = tmp_path / "bench" / "llama-mini"
    repo.mkdir(parents=True)
    save_file(tensors, str(repo / WEIGHTS))
    data = (repo / WEIGHTS).read_bytes()
    assert len(data) > 100 * 1024 * 1024
    targets = ["model.embed_tokens.weight"] + [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    rows = {t: sorted(rng.choice(tensors[t].shape[0], size=64, replace=False).tolist()) for t in targets}
    dense_rows = {t: [3 * i for i in range(64)] for t in targets}
    results = []
    with LocalHub(tmp_path, token=TOKEN) as bench_hub:
        for label, policy, plan in [
            ("random rows, one request per span", CoalescePolicy(max_gap=0), rows),
            ("random rows, default coalescing", CoalescePolicy(), rows),
            ("every 3rd row, default coalescing", CoalescePolicy(), dense_rows),
        ]:
            with HuggingFaceSource(
                "hf", bench_hub.endpoint, TOKEN, http=HttpSettings(coalesce=policy)
            ) as src:
                snap = src.snapshot("bench/llama-mini")
                files = src.open_files(snap, budget=64 << 20)
                f = files.open(WEIGHTS)
                started = time.perf_counter()
                (n,) = struct.unpack("<Q", f.read(0, 8))
                header = f.read(8, 8 + n)
                t_header = time.perf_counter() - started
                spans = [span for t in targets for span in header_rows(data[: 8 + n], t, plan[t])]
                out = f.read_many(spans)
                elapsed = time.perf_counter() - started
                assert json.loads(header)["model.embed_tokens.weight"]["shape"] == [16384, 1024]
                assert out == [data[s:e] for s, e in spans]
                useful = 8 + n + sum(e - s for s, e in spans)
                stats = files.stats.snapshot()
                results.append(
                    (label, stats["bytes_read"], useful, stats["requests"], t_header, elapsed, spans)
                )
    print(f"\nfile: {len(data) / 2**20:.1f} MiB, header {n} B, {len(results[0][6])} row spans of 4096 B")
    print(f"{'plan':<38} {'bytes read':>11} {'useful':>9} {'requests':>8} {'header s':>8} {'total s':>8}")
    for label, read, useful, requests, t_header, elapsed, _spans in results:
        print(f"{label:<38} {read:>11,} {useful:>9,} {requests:>8} {t_header:>8.3f} {elapsed:>8.3f}")
    one_each, coalesced, dense = results
    assert one_each[1] == one_each[2]  # no gap bytes without coalescing
    # the resolve redirect, the two header reads, then one request per run of adjacent rows
    assert one_each[3] == 3 + len(plan_reads(one_each[6], CoalescePolicy(max_gap=0)).requests)
    assert coalesced[3] <= one_each[3]
    assert dense[3] < one_each[3] // 10
    assert all(r[1] < len(data) // 20 for r in results)
