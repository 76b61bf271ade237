"""`LocalHub`: a folder of model repos served on loopback over the Hugging Face HTTP API.

The transport is the standard library's threaded HTTP/1.1 server with keep-alive (huggingface_hub's
httpx2 client pools connections). Per request it: applies fault rules, counts the request against the
emulated rate limits, lets `monitor.localhub.app.HubApp` answer, rewrites the answer for faults that
corrupt answers, writes it (streaming file bodies), and appends a `RequestRecord` to the log.

Two origins are served: the API ``http://127.0.0.1:PORT`` and the "CDN" ``http://localhost:PORT``
(same socket; a different origin for HTTP clients), so redirects to storage cross origins as on the
Hub and clients drop ``Authorization`` on the way. Only loopback addresses can be bound.

Example::

    with LocalHub(tmp_path, token="hf_test") as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")
        api.model_info("acme/tiny", files_metadata=True)
        assert not any(r.auth for r in hub.log.find(bucket="cdn"))
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from monitor.localhub.app import HubApp, HubSettings
from monitor.localhub.cdn import DEFAULT_CDN_TTL_S, UrlSigner
from monitor.localhub.faults import FaultAction, FaultSet
from monitor.localhub.log import RequestLog, RequestRecord
from monitor.localhub.ratelimit import FixedWindowLimiter, RateLimitPolicy
from monitor.localhub.repos import RepoIndex
from monitor.localhub.wire import Request, Response, error_response

__all__ = ["LocalHub"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (only ``paths-info`` takes one)."""
_IDLE_TIMEOUT_S = 60.0
_STOP_JOIN_S = 5.0


def _bucket(raw_path: str) -> str:
    if raw_path == "/api" or raw_path.startswith("/api/"):
        return "api"
    if raw_path.startswith("/cdn/"):
        return "cdn"
    parts = raw_path.split("/")
    if len(parts) > 3 and parts[3] == "resolve":
        return "resolvers"
    return "other"


def _loopback(host: str) -> str:
    """The IPv4 loopback address to bind, or ``ValueError`` for anything else."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback IPv4 address or 'localhost', got {host!r}") from None
    if ip.version != 4 or not ip.is_loopback:
        raise ValueError(f"LocalHub binds loopback (127.0.0.0/8) only, got {host!r}")
    return str(ip)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        self.hub = hub
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conn_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="localhub-conn", daemon=True
        )
        with self._conn_lock:
            self._conns.add(request)
            self._conn_threads.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.discard(request)
                self._conn_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is normal (ranged readers abort ignored ranges on purpose).
        log.debug("localhub: connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> list[threading.Thread]:
        with self._conn_lock:
            conns, threads = list(self._conns), list(self._conn_threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return threads


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubsentry-localhub"
    sys_version = ""
    timeout = _IDLE_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every small answer on keep-alive connections.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("localhub: %s " + format, self.address_string(), *args)

    # -- one request -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        hub = self.server.hub
        target = urlsplit(self.path)
        raw_path, query_string = target.path or "/", target.query
        method = self.command.upper()
        range_header = self.headers.get("Range")
        auth_header = self.headers.get("Authorization")
        record = RequestRecord(
            method=method,
            path=unquote(raw_path),
            query=query_string,
            range=range_header,
            status=0,
            bytes_sent=0,
            bucket=_bucket(raw_path),
            t=time.time(),
            auth=auth_header is not None,
            host=self.headers.get("Host", ""),
        )
        self._logged: RequestRecord | None = None
        try:
            body = self._read_body()
            if body is None:
                self.close_connection = True
                self._write(error_response(413, "Request body too large"), head=False, record=record)
                return
            decision = hub.faults.decide(method, record.path, has_range=range_header is not None)
            record = replace(record, fault=",".join(decision.names) or None)
            for seconds in decision.delays:
                if hub._stopping.wait(seconds):
                    self.close_connection = True
                    return
            action = decision.action
            if action is not None and action.kind == "reset":
                self._log(record)
                self._reset()
                return
            if action is not None and action.kind == "status":
                response = self._fault_status(action)
            else:
                response = self._answer(
                    hub, method, raw_path, query_string, body, record.bucket, auth_header, action
                )
            truncate_at = action.n_bytes if action is not None and action.kind == "truncate" else None
            self._write(response, head=method == "HEAD", truncate_at=truncate_at, record=record)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("localhub: %s %s: connection lost: %s", method, raw_path, exc)
            self.close_connection = True
        except Exception as exc:
            log.exception("localhub: %s %s failed while answering", method, raw_path)
            self.close_connection = True
            if self._logged is None:  # nothing sent yet: a proper 500
                with contextlib.suppress(Exception):
                    self._write(
                        error_response(500, f"Internal error: {type(exc).__name__}"),
                        head=False,
                        record=record,
                    )
            # else headers are out (a generator failed mid-body): dropping the connection leaves the
            # client with a short body rather than a silently wrong one.
        finally:
            if self._logged is None:
                self._log(record)

    def _log(self, record: RequestRecord) -> None:
        """Append (or correct) this request's record; done *before* the client can see the answer end,
        so a test reading ``hub.log`` right after a response always finds it."""
        if self._logged is None:
            self.server.hub.log.append(record)
        else:
            self.server.hub.log.replace(self._logged, record)
        self._logged = record

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return None
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return None
        return self.rfile.read(int(length))

    def _answer(
        self,
        hub: LocalHub,
        method: str,
        raw_path: str,
        query_string: str,
        body: bytes,
        bucket: str,
        auth_header: str | None,
        action: FaultAction | None,
    ) -> Response:
        limiter = hub._limiter
        verdict = limiter.hit(bucket) if limiter is not None else None
        if limiter is not None and verdict is not None and not verdict.allowed:
            message = (
                f"Rate limit reached for '{bucket}': {limiter.policy.quota(bucket)} requests per "
                f"{limiter.policy.window_s} s. Retry later."
            )
            return error_response(429, message, headers=verdict.headers)
        token = None
        if auth_header is not None:
            scheme, _, value = auth_header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        request = Request(
            method=method,
            raw_path=raw_path,
            query=parse_qs(query_string, keep_blank_values=True),
            query_string=query_string,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            token=token,
        )
        response = hub._app.handle(request, ignore_range=action is not None and action.kind == "ignore_range")
        if verdict is not None:
            response.headers.extend(verdict.headers)
        if action is not None and action.kind == "wrong_content_range":
            self._shift_content_range(response, action.shift)
        if action is not None and action.kind == "commit_moved" and response.header("X-Repo-Commit"):
            response.set_header("X-Repo-Commit", action.sha or "")
        return response

    @staticmethod
    def _fault_status(action: FaultAction) -> Response:
        headers = list(action.headers)
        if action.body is None:
            response = error_response(action.code, f"Injected fault: HTTP {action.code}", headers=headers)
        else:
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/octet-stream"))
            response = Response(action.code, headers, action.body)
        return response

    @staticmethod
    def _shift_content_range(response: Response, shift: int) -> None:
        value = response.header("Content-Range")
        if response.status != 206 or not value:
            return
        span, _, total = value.removeprefix("bytes ").partition("/")
        first, _, last = span.partition("-")
        response.set_header("Content-Range", f"bytes {int(first) + shift}-{int(last) + shift}/{total}")

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _write(
        self, response: Response, *, head: bool, record: RequestRecord, truncate_at: int | None = None
    ) -> None:
        """Send the answer, logging it just before the headers leave."""
        stream = response.stream
        sent = 0
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(response.content_length))
            if truncate_at is not None or self.close_connection:
                self.close_connection = True
                self.send_header("Connection", "close")
            budget = (
                response.content_length if truncate_at is None else min(truncate_at, response.content_length)
            )
            self._log(replace(record, status=response.status, bytes_sent=0 if head else budget))
            self.end_headers()
            if head:
                return
            chunks = stream.chunks() if stream is not None else iter([response.body])
            for chunk in chunks:
                part = chunk[: budget - sent]
                if part:
                    self.wfile.write(part)
                    sent += len(part)
                if sent >= budget:
                    break
            if truncate_at is not None:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
        except BaseException:
            if self._logged is not None and self._logged.bytes_sent != sent:
                self._log(replace(self._logged, bytes_sent=sent))
            raise
        finally:
            if stream is not None and stream.close is not None:
                stream.close()


class LocalHub:
    """Serve ``root/org/name/...`` repos over the Hugging Face HTTP API on loopback.

    Args:
        root (`Path`): the folder of repos.
        host (`str`): loopback address to bind (``127.0.0.1`` by default; ``localhost`` is an alias).
        port (`int`): port; ``0`` picks a free one (read it from `endpoint`).
        cdn_redirect (`bool`): answer LFS files with 302 to signed CDN URLs (else serve them directly).
        token (`str | None`): bearer token granting private and gated access; ``None`` = nobody has it.
        page_size (`int`): ``/api/models`` page size (``limit`` lowers it, 1000 at most).
        rate_limit (`RateLimitPolicy | None`): emulate the Hub's 429s; ``None`` = unlimited, no headers.
        tree_page_size (`int`): ``/tree`` page size (the Hub uses 1000).
        cdn_url_ttl_s (`float`): lifetime of signed CDN URLs.

    Attributes:
        endpoint (`str`): ``http://127.0.0.1:PORT`` (``HfApi(endpoint=...)`` or ``HF_ENDPOINT``).
        cdn_origin (`str`): ``http://localhost:PORT`` (another origin, like the Hub's CDN).
        log (`RequestLog`): every request answered, thread-safe.
        faults (`FaultSet`): fault rules, applied in order.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_redirect: bool = True,
        token: str | None = None,
        page_size: int = 100,
        rate_limit: RateLimitPolicy | None = None,
        tree_page_size: int = 1000,
        cdn_url_ttl_s: float = DEFAULT_CDN_TTL_S,
    ) -> None:
        if page_size < 1 or tree_page_size < 1:
            raise ValueError("page sizes must be >= 1")
        if token is not None and not token.strip():
            raise ValueError("token must be None or a non-empty string")
        self.root = Path(root)
        self.log = RequestLog()
        self.faults = FaultSet()
        self.index = RepoIndex(self.root)
        self._limiter = FixedWindowLimiter(rate_limit) if rate_limit is not None else None
        self._stopping = threading.Event()
        bind = _loopback(host)
        self._servers = [_Server((bind, port), self)]
        port = self._servers[0].server_address[1]
        self.endpoint = f"http://{bind}:{port}"
        if bind == "127.0.0.1":
            self.cdn_origin = f"http://localhost:{port}"
        else:  # "localhost" would not reach this address: give the CDN its own port instead
            self._servers.append(_Server((bind, 0), self))
            self.cdn_origin = f"http://{bind}:{self._servers[1].server_address[1]}"
        self._signer = UrlSigner(ttl_s=cdn_url_ttl_s)
        self._app = HubApp(
            self.index,
            HubSettings(
                endpoint=self.endpoint,
                cdn_origin=self.cdn_origin,
                cdn_redirect=cdn_redirect,
                token=token,
                page_size=page_size,
                tree_page_size=tree_page_size,
            ),
            self._signer,
        )
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Start serving in background threads (idempotent); returns ``self``."""
        if self._closed:
            raise RuntimeError("this LocalHub was stopped; create a new one")
        if not self._threads:
            self.index.scan()  # hash everything once up front, so the first request is not slow
            for server in self._servers:
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.1},
                    name="localhub-accept",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
            log.info("localhub: serving %s at %s (CDN %s)", self.root, self.endpoint, self.cdn_origin)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        for server in self._servers:
            if self._threads:
                server.shutdown()
        pending = [t for server in self._servers for t in server.drop_connections()]
        deadline = time.monotonic() + _STOP_JOIN_S
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(_STOP_JOIN_S)
        self.index.state.save()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._closed

    # -- helpers for tests and operators -----------------------------------------------------------

    def clear_log(self) -> None:
        """Forget every logged request."""
        self.log.clear()

    def rescan(self) -> int:
        """Re-scan the folder now; return the number of servable repos."""
        return len(self.index.scan())

    def problems(self) -> dict[str, str]:
        """What the hub refuses to serve or could not derive, with reasons (also logged)."""
        return {**self.index.problems(), **self._app.catalog.problems()}

    def cdn_url(self, sha256: str, *, ttl_s: float | None = None) -> str:
        """A signed CDN URL for a blob (negative ``ttl_s`` gives an expired one, for tests)."""
        return f"{self.cdn_origin}/cdn/{sha256}?{self._signer.sign(sha256, ttl_s=ttl_s)}"

    def reset_rate_limits(self) -> None:
        """Open fresh rate-limit windows in every bucket."""
        if self._limiter is not None:
            self._limiter.reset()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._closed else "ready"
        return f"LocalHub({str(self.root)!r}, endpoint={self.endpoint!r}, {state})"
