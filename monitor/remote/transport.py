"""The HTTP client HubSentry owns for ranged reads: timeouts, per-host gates, rate limits, auth.

huggingface_hub's shared client follows redirects itself and has no timeout; for weight reads we
need the opposite: we follow the hub's 302 ourselves (to verify the pinned commit on it, cache the
signed storage URL and decide where the token may go), every wait is bounded, at most
``per_host_concurrency`` requests are in flight to any one host, and every request to the hub's
own origin first takes a slot from the hub's `HubRateLimiter` and reports the hub's rate-limit
headers back to it.

`HubHttpClient.open` is the only place a request leaves: it adds ``Authorization`` only for the
configured hub origin (never for storage hosts, whatever they are), maps transport failures to
`TransientHubError`, and always closes the response, so a 200 to a ranged request is aborted
without reading its body. For storage hosts it also checks the address the connection actually went to
(`RedirectPolicy.refusal`): the redirect was checked against what the name resolved to then, and a DNS
answer that changed in between (rebinding) must not reach a private or link-local address. Behind an
HTTP proxy (``*_proxy`` environment variables) the proxy resolves storage names, so only the redirect
check applies.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import httpx2
from huggingface_hub.utils import build_hf_headers

from monitor import __version__
from monitor.errors import HubError, TransientHubError
from monitor.hubs.ratelimit import HubRateLimiter, bucket_for_url
from monitor.remote.coalesce import DEFAULT_COALESCE, CoalescePolicy
from monitor.remote.retry import DEFAULT_RETRY, RetryPolicy
from monitor.validate import RedirectPolicy, origin_of, redact_url

__all__ = ["DEFAULT_HTTP", "HttpSettings", "HubHttpClient", "read_exact", "read_snippet"]

T = TypeVar("T")

_TRANSIENT = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


@dataclass(frozen=True)
class HttpSettings:
    """Knobs of the ranged-read client (config ``[[hubs]]`` maps onto these).

    Attributes:
        connect_timeout_s (`float`): TCP/TLS connect timeout.
        read_timeout_s (`float`): longest silence while reading a response.
        pool_timeout_s (`float`): longest wait for a free connection or host slot.
        per_host_concurrency (`int`): requests in flight to one host (hub or storage).
        max_connections (`int`): connections kept by the client overall.
        workers (`int`): threads issuing the requests of `read_many` in parallel.
        max_redirects (`int`): redirect hops followed for one read.
        max_error_body (`int`): bytes of an error body read for its message.
        retry (`RetryPolicy`): attempts, backoff and the per-call wait bound.
        coalesce (`CoalescePolicy`): how spans are merged into requests.
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    pool_timeout_s: float = 60.0
    per_host_concurrency: int = 4
    max_connections: int = 16
    workers: int = 8
    max_redirects: int = 5
    max_error_body: int = 64 * 1024
    retry: RetryPolicy = field(default_factory=lambda: DEFAULT_RETRY)
    coalesce: CoalescePolicy = field(default_factory=lambda: DEFAULT_COALESCE)

    def __post_init__(self) -> None:
        for name in ("per_host_concurrency", "max_connections", "workers", "max_redirects"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("connect_timeout_s", "read_timeout_s", "pool_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


DEFAULT_HTTP = HttpSettings()


class HubHttpClient:
    """The httpx2 client, host gates, worker threads and rate limiter of one hub.

    Thread-safe; share one per hub. The token is held privately and never appears in `repr`,
    messages or logs.

    Args:
        endpoint (`str`): the hub endpoint (the only origin that receives the token).
        token (`str | None`): the resolved secret, or ``None`` for anonymous reads.
        limiter (`HubRateLimiter | None`): the hub's shared limiter (``None``: unlimited).
        redirects (`RedirectPolicy | None`): redirect rules; default: any http(s) storage host.
        settings (`HttpSettings`): timeouts, concurrency, retry and coalescing.
        stop (`threading.Event | None`): set on shutdown; interrupts waits and retries.
        transport (`httpx2.BaseTransport | None`): for tests of the client itself only.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None,
        limiter: HubRateLimiter | None,
        redirects: RedirectPolicy | None = None,
        settings: HttpSettings = DEFAULT_HTTP,
        stop: threading.Event | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.redirects = redirects or RedirectPolicy.for_endpoint(endpoint)
        self.endpoint = self.redirects.endpoint
        self.limiter = limiter
        self.settings = settings
        self.stop = stop
        self.__token = token or None
        user_agent = build_hf_headers(token=False, library_name="hubsentry", library_version=__version__)
        self._client = httpx2.Client(
            follow_redirects=False,
            timeout=httpx2.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.pool_timeout_s,
            ),
            limits=httpx2.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            headers={"user-agent": user_agent["user-agent"]},
            transport=transport,
        )
        self._gates: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
        self._gates_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self._check_peers = not urllib.request.getproxies()

    @property
    def authenticated(self) -> bool:
        """Whether requests to the hub carry a token."""
        return self.__token is not None

    def __repr__(self) -> str:
        return f"HubHttpClient({self.endpoint!r}, authenticated={self.authenticated})"

    def _gate(self, url: httpx2.URL) -> threading.BoundedSemaphore:
        key = origin_of(url)
        with self._gates_lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = threading.BoundedSemaphore(self.settings.per_host_concurrency)
                self._gates[key] = gate
            return gate

    @contextmanager
    def open(self, url: httpx2.URL, *, headers: dict[str, str], deadline: float) -> Iterator[httpx2.Response]:
        """Send one GET and yield the streamed response; the body is read only if the caller does.

        Requests to the hub origin take a rate-limiter slot first (waiting at most until
        ``deadline``, a `time.monotonic` value) and carry the token; the response's rate-limit
        headers are fed back to the limiter. The host gate is held until the response is closed.

        Raises:
            `RateLimited`: no hub slot before ``deadline``, or stopping.
            `TransientHubError`: connect/read timeout, reset, protocol error, no free host slot.
            `HubError`: the client is closed, or a storage connection reached an address the redirect
                policy refuses (nothing of its body is read).
        """
        if self._closed:
            raise HubError(f"{self.endpoint}: the HTTP client is closed")
        is_hub = self.redirects.is_hub(url)
        bucket = bucket_for_url(url, self.endpoint) if is_hub else None
        if bucket is not None and self.limiter is not None:
            self.limiter.acquire(bucket, max_wait_s=max(0.0, deadline - time.monotonic()), stop=self.stop)
        gate = self._gate(url)
        if not gate.acquire(timeout=self.settings.pool_timeout_s):
            raise TransientHubError(
                f"{redact_url(url)}: no free request slot for host {url.host!r} within "
                f"{self.settings.pool_timeout_s:g} s"
            )
        try:
            request_headers = dict(headers)
            if is_hub and self.__token is not None:
                request_headers["authorization"] = f"Bearer {self.__token}"
            request = self._client.build_request("GET", url, headers=request_headers)
            try:
                response = self._client.send(request, stream=True)
            except _TRANSIENT as exc:
                raise TransientHubError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from exc
            except httpx2.HTTPError as exc:
                raise HubError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from exc
            try:
                if is_hub and self.limiter is not None:
                    self.limiter.observe(bucket, response.headers, status=response.status_code)
                if not is_hub:
                    self._check_peer(url, response)
                yield response
            finally:
                response.close()
        finally:
            gate.release()

    def _check_peer(self, url: httpx2.URL, response: httpx2.Response) -> None:
        """Refuse a storage answer that came from an address the policy forbids (see the module docstring)."""
        if not self._check_peers or self.redirects.vouched(url.host):
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:  # not a socket (a test transport): nothing to check
            return
        why = self.redirects.refusal(str(peer[0]))
        if why is not None:
            raise HubError(
                f"{redact_url(url)}: refused: the connection went to {peer[0]}, {why} (the host's DNS answer "
                "changed since the redirect was checked?); nothing was read"
            )

    def map(self, fn: Callable[[T], bytes], items: Sequence[T]) -> list[bytes]:
        """Run ``fn`` over ``items`` on the worker threads; results in order.

        On the first failure, requests not yet started are cancelled and that failure (the
        earliest by position among those that failed) is raised once the running ones ended.
        """
        if len(items) == 1:
            return [fn(items[0])]
        pool = self._executor()
        futures: list[Future[bytes]] = [pool.submit(fn, item) for item in items]
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        wait(futures)
        for future in futures:
            if not future.cancelled() and (error := future.exception()) is not None:
                raise error
        return [future.result() for future in futures]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise HubError(f"{self.endpoint}: the HTTP client is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.settings.workers, thread_name_prefix="hubsentry-read"
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker threads and close all connections (idempotent)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> HubHttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_exact(response: httpx2.Response, length: int, *, on_bytes: Callable[[int], None]) -> bytes:
    """Read exactly ``length`` raw body bytes, reporting each chunk's size to ``on_bytes``.

    Bodies are read undecoded (`iter_raw`): we ask for ``identity`` and refuse any other
    ``Content-Encoding``, because decoded bytes would not be the file's bytes.

    Raises:
        `TransientHubError`: the body ended early (reset, truncation) or ran past ``length``.
        `HubError`: the body is encoded.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HubError(
            f"{redact_url(response.url)}: body is {encoding!r}-encoded; ranged reads need identity"
        )
    buf = bytearray()
    try:
        for chunk in response.iter_raw():
            on_bytes(len(chunk))
            if len(buf) + len(chunk) > length:
                raise TransientHubError(
                    f"{redact_url(response.url)}: server sent more than the {length} bytes requested"
                )
            buf += chunk
    except _TRANSIENT as exc:
        raise TransientHubError(
            f"{redact_url(response.url)}: body broke off after {len(buf)} of {length} bytes "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if len(buf) != length:
        raise TransientHubError(f"{redact_url(response.url)}: short body, {len(buf)} of {length} bytes")
    return bytes(buf)


def read_snippet(response: httpx2.Response, limit: int) -> str:
    """At most ``limit`` bytes of an error body, decoded leniently, for a message; never raises."""
    buf = bytearray()
    try:
        for chunk in response.iter_bytes():
            buf += chunk
            if len(buf) >= limit:
                break
    except (httpx2.HTTPError, httpx2.StreamError):
        pass
    text = bytes(buf[:limit]).decode("utf-8", "replace").strip()
    return " ".join(text.split())[:500]
