"""`HttpRangeSource`: one hub file, pinned to one commit, read by HTTP range requests.

Every read goes to ``{endpoint}/{repo}/resolve/{commit}/{path}`` — the commit the snapshot was
taken at, never a branch — with ``Range: bytes=a-b`` (inclusive end on the wire; our spans are
half-open). The hub answers small files itself (206) and LFS files with a 302 to a signed,
expiring storage URL on another origin. We follow that redirect ourselves, without the token,
remember the storage URL for the next reads of the file (saving rate-limited resolver calls), and
go back to ``/resolve`` when storage answers 401/403 (the signature expired).

What is verified, and what it raises when it fails:

====================================================  ============================================
check                                                 error
====================================================  ============================================
``X-Repo-Commit`` on hub answers == pinned commit     `CommitMoved`
the pinned commit still exists (not                   `CommitMoved`
  ``RevisionNotFound``)
size (``X-Linked-Size``, ``Content-Range`` total)     `CommitMoved`
  == the listed size
ETag / ``X-Linked-Etag`` stable across reads, and     `CommitMoved`
  == the listed LFS SHA-256 when both are digests
status 200 to a ranged request                        `RangeIgnored` (body never read)
``Content-Range`` is exactly ``bytes a-b/size``       `TransientHubError` (retried)
body length == requested length                       `TransientHubError` (retried)
other 404 / 401 / 403 / 429 / 5xx / 416 from the hub  `NotFound` / `GatedRepo` / `RateLimited` /
                                                      `TransientHubError` / `CommitMoved`
====================================================  ============================================

Budget: `read_many` plans the requests (`coalesce.plan_reads`), re-plans without gap bytes when
the plan would not fit the remaining `ByteBudget`, and reserves the planned bytes *before* the
first request, so a breach raises `BudgetExceeded` and costs nothing. A retry after a partial
body reserves the bytes that partial body cost, so the budget is never below what was actually
transferred.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx2

from monitor.errors import (
    CommitMoved,
    GatedRepo,
    HubError,
    NotFound,
    RangeIgnored,
    RateLimited,
    TransientHubError,
)
from monitor.hubs.ratelimit import retry_after_from_headers
from monitor.remote.coalesce import plan_reads
from monitor.remote.retry import sleep_unless_stopped
from monitor.remote.source import ByteBudget, FileEntry, ReadStats, Span, check_span
from monitor.remote.transport import HubHttpClient, read_exact, read_snippet
from monitor.validate import redact_url, validate_commit, validate_model_repo_id, validate_repo_path

__all__ = ["HttpRangeSource", "parse_content_range", "resolve_url"]

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REDIRECTS = (301, 302, 303, 307, 308)


def resolve_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    """``{endpoint}/{repo}/resolve/{commit}/{quote(path)}`` (huggingface_hub's `hf_hub_url` shape)."""
    return f"{endpoint}/{repo_id}/resolve/{commit}/{quote(path)}"


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``"bytes a-b/total"`` → ``(a, b_inclusive, total or None)``; ``None`` if malformed."""
    if value is None:
        return None
    match = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


class _StorageExpiredError(Exception):
    """Storage refused a cached signed URL: fetch a fresh one from /resolve (not a failed attempt)."""


@dataclass
class _Attempt:
    """What one attempt cost, kept even when it fails (partial bodies are real egress).

    Attributes:
        received (`int`): body bytes received.
        hub_throttled (`bool`): the hub answered 429 (its bucket is now closed in the limiter).
    """

    received: int = 0
    hub_throttled: bool = False


class HttpRangeSource:
    """A `ByteSource` over one file of a hub repo at a pinned commit.

    Thread-safe: `read_many` issues its requests from the client's worker threads, and several
    threads may read the same file.

    Args:
        client (`HubHttpClient`): the hub's shared client (limiter, gates, token, settings).
        repo_id (`str`), commit (`str`): the pinned snapshot.
        entry (`FileEntry`): the listed file; its size and SHA-256 are what reads are checked against.
        stats (`ReadStats`), budget (`ByteBudget`): shared by every file of the snapshot.
    """

    def __init__(
        self,
        client: HubHttpClient,
        *,
        repo_id: str,
        commit: str,
        entry: FileEntry,
        stats: ReadStats,
        budget: ByteBudget,
    ) -> None:
        self.path = validate_repo_path(entry.path)
        self.size = entry.size
        self.repo_id = validate_model_repo_id(repo_id)
        self.commit = validate_commit(commit)
        self._entry = entry
        self._client = client
        self._stats = stats
        self._budget = budget
        self._resolve = httpx2.URL(resolve_url(client.endpoint, repo_id, commit, entry.path))
        self._lock = threading.Lock()
        self._storage: httpx2.URL | None = None
        self._hub_etag: str | None = None
        self._storage_etag: str | None = None

    @property
    def ref(self) -> str:
        """``repo@commit:path``, for messages."""
        return f"{self.repo_id}@{self.commit}:{self.path}"

    def __repr__(self) -> str:
        return f"HttpRangeSource({self.ref!r}, size={self.size})"

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (one or more requests, see `read_many`)."""
        return self.read_many([(start, end)])[0]

    def read_many(self, spans: Sequence[Span]) -> list[bytes]:
        """The bytes of each span, in order; nearby spans share requests, requests run in parallel.

        Raises:
            `FormatError`: a span lies outside the file.
            `BudgetExceeded`: the planned bytes do not fit the budget (nothing was sent).
            `HubError` subclasses: see the module docstring.
        """
        for start, end in spans:
            check_span(self.path, self.size, start, end)
        settings = self._client.settings
        plan = plan_reads(spans, settings.coalesce)
        remaining = self._budget.remaining
        if remaining is not None and plan.total_bytes > remaining and plan.gap_bytes:
            plan = plan_reads(spans, settings.coalesce.without_gaps())
        if not plan.requests:
            return [b"" for _ in spans]
        self._budget.reserve(plan.total_bytes, what=self.ref)
        bodies = self._client.map(self._fetch, plan.requests)
        return plan.assemble(bodies)

    def _fetch(self, span: Span) -> bytes:
        """One planned request, with bounded retries; returns exactly ``end - start`` bytes."""
        start, end = span
        policy = self._client.settings.retry
        deadline = time.monotonic() + policy.max_wait_s
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            progress = _Attempt()
            try:
                return self._attempt(start, end, progress, deadline)
            except _StorageExpiredError:
                if refreshed:
                    raise HubError(f"{self.ref}: storage refused a freshly signed URL; giving up") from None
                refreshed = True
                attempt -= 1
                continue
            except RateLimited as exc:
                # A hub 429 closed its bucket in the limiter, so the next attempt waits there (up to
                # the deadline); anything else (storage 429, no limiter) waits here, also bounded.
                if attempt >= policy.max_attempts or time.monotonic() + exc.retry_after_s > deadline:
                    raise
                error: HubError = exc
                limited = progress.hub_throttled and self._client.limiter is not None
                pause = 0.0 if limited else exc.retry_after_s
            except TransientHubError as exc:
                if attempt >= policy.max_attempts:
                    raise
                error, pause = exc, policy.delay(attempt)
            if progress.received:
                self._budget.reserve(progress.received, what=f"{self.ref} (retry after a partial body)")
            if sleep_unless_stopped(pause, self._client.stop):
                raise error

    def _attempt(self, start: int, end: int, progress: _Attempt, deadline: float) -> bytes:
        with self._lock:
            url = self._storage or self._resolve
        from_cache = url is not self._resolve
        wanted = f"bytes={start}-{end - 1}"
        headers = {"range": wanted, "accept-encoding": "identity"}
        redirects = self._client.redirects
        for _hop in range(self._client.settings.max_redirects + 1):
            is_hub = redirects.is_hub(url)
            with self._client.open(url, headers=headers, deadline=deadline) as response:
                self._stats.add(self.path, 0)
                status = response.status_code
                if status == 200:
                    raise RangeIgnored(
                        f"{self.ref}: {redact_url(url)} answered 200 to 'Range: {wanted}'; "
                        "the body was not read"
                    )
                if status in _REDIRECTS:
                    url = self._follow(url, response, is_hub)
                    continue
                if is_hub:
                    self._check_commit(response, required=status == 206)
                if status == 206:
                    return self._body(response, start, end, progress, is_hub)
                if not is_hub and from_cache and status in (401, 403):
                    with self._lock:
                        self._storage = None
                    raise _StorageExpiredError
                progress.hub_throttled = is_hub and status == 429
                raise self._status_error(response, is_hub)
        raise HubError(f"{self.ref}: more than {self._client.settings.max_redirects} redirects")

    def _follow(self, url: httpx2.URL, response: httpx2.Response, is_hub: bool) -> httpx2.URL:
        """Validate a redirect; remember it if it leaves the hub for storage."""
        location = response.headers.get("location", "")
        try:
            target = self._client.redirects.check(url, location)
        except ValueError as exc:
            raise HubError(f"{self.ref}: {exc}") from None
        leaves_hub = is_hub and not self._client.redirects.is_hub(target)
        if is_hub:
            self._check_commit(response, required=leaves_hub)
        if leaves_hub:
            linked_size = response.headers.get("x-linked-size")
            if linked_size is not None and linked_size.strip() != str(self.size):
                raise CommitMoved(
                    f"{self.ref}: the hub now reports {linked_size.strip()!r} bytes, the snapshot listed "
                    f"{self.size}; re-snapshot the repo"
                )
            self._check_hub_etag(_etag(response.headers.get("x-linked-etag") or response.headers.get("etag")))
            with self._lock:
                self._storage = target
        return target

    def _body(
        self, response: httpx2.Response, start: int, end: int, progress: _Attempt, is_hub: bool
    ) -> bytes:
        announced = parse_content_range(response.headers.get("content-range"))
        if announced is None or announced[0] != start or announced[1] != end - 1:
            raise TransientHubError(
                f"{self.ref}: asked for bytes {start}-{end - 1}, got Content-Range "
                f"{response.headers.get('content-range')!r}"
            )
        total = announced[2]
        if total is not None and total != self.size:
            raise CommitMoved(
                f"{self.ref}: the file is now {total} bytes, the snapshot listed {self.size}; "
                "re-snapshot the repo"
            )
        etag = _etag(response.headers.get("x-linked-etag") or response.headers.get("etag"))
        if is_hub:
            self._check_hub_etag(etag)
        else:
            self._check_storage_etag(etag)
        length = response.headers.get("content-length")
        if length is not None and length.strip() != str(end - start):
            raise TransientHubError(
                f"{self.ref}: Content-Length {length.strip()!r} does not match the "
                f"{end - start} bytes requested"
            )

        def on_bytes(nbytes: int) -> None:
            progress.received += nbytes
            self._stats.add(self.path, nbytes, requests=0)

        return read_exact(response, end - start, on_bytes=on_bytes)

    def _check_commit(self, response: httpx2.Response, *, required: bool) -> None:
        commit = response.headers.get("x-repo-commit")
        if commit is None:
            if required:
                raise HubError(
                    f"{self.ref}: the hub answered without X-Repo-Commit, so the pinned commit cannot be "
                    "verified; refusing the bytes"
                )
            return
        if commit.strip() != self.commit:
            raise CommitMoved(
                f"{self.ref}: the hub served commit {commit.strip()[:40]!r} instead of the pinned one; "
                "re-snapshot the repo"
            )

    def _check_hub_etag(self, etag: str | None) -> None:
        if etag is None:
            return
        expected = self._entry.sha256
        if expected and _SHA256_RE.fullmatch(etag) and etag != expected:
            raise CommitMoved(f"{self.ref}: content digest {etag} differs from the listed SHA-256 {expected}")
        with self._lock:
            if self._hub_etag is None:
                self._hub_etag = etag
            elif self._hub_etag != etag:
                raise CommitMoved(
                    f"{self.ref}: ETag changed from {self._hub_etag!r} to {etag!r} between reads"
                )

    def _check_storage_etag(self, etag: str | None) -> None:
        if etag is None:
            return
        with self._lock:
            if self._storage_etag is None:
                self._storage_etag = etag
            elif self._storage_etag != etag:
                raise CommitMoved(
                    f"{self.ref}: storage ETag changed from {self._storage_etag!r} to {etag!r} between reads"
                )

    def _status_error(self, response: httpx2.Response, is_hub: bool) -> HubError:
        status = response.status_code
        code = response.headers.get("x-error-code", "")
        detail = read_snippet(response, self._client.settings.max_error_body)
        where = f"{self.ref}: {'hub' if is_hub else 'storage'} answered {status}"
        message = (
            f"{where} ({code or 'no error code'}): {detail}"
            if detail
            else f"{where} ({code or 'no error code'})"
        )
        if status == 429:
            wait = retry_after_from_headers(response.headers)
            return RateLimited(message, retry_after_s=wait if wait is not None else 1.0)
        if status == 408 or status >= 500:
            return TransientHubError(message)
        if not is_hub and status in (401, 403):
            return HubError(f"{message}; storage refused the URL the hub signed")
        if code == "GatedRepo":
            return GatedRepo(message)
        if is_hub and code == "RevisionNotFound":  # the repo exists, the pinned commit does not any more
            return CommitMoved(f"{message}; the repo was rewritten since the snapshot, re-snapshot it")
        if code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound") or status == 404:
            return NotFound(message)
        if status in (401, 403):
            return GatedRepo(message)
        if status == 416:
            return CommitMoved(f"{message}; the file is shorter than the {self.size} bytes listed")
        return HubError(message)
