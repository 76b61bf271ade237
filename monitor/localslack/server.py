"""HTTP side of the local Slack: a loopback `ThreadingHTTPServer` plus transport-level fault injection.

The real `slack_sdk.WebClient(base_url=server.base_url)` talks to it unchanged: every request is
``POST /api/<method>`` with ``Authorization: Bearer <token>`` and a JSON or form body. Faults are what a
client meets in production and must survive: HTTP 429 with ``Retry-After``, 500/503, ``ok:false`` errors,
slow answers (client timeouts), connections reset before or *after* the message was recorded (the ambiguous
case crash-safe delivery exists for), outages (503 or reset for a clock period) and refused connections.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from monitor.localslack.workspace import Answer, Message, RequestRecord, Workspace

__all__ = ["DEFAULT_TOKEN", "LocalSlack"]

logger = logging.getLogger(__name__)

DEFAULT_TOKEN = "xoxb-local-hubsentry-test-token"  # noqa: S105 - a test credential of the local server
_MAX_BODY = 2 * 1024 * 1024
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

FaultKind = Literal["status", "error", "delay", "reset", "reset_after"]


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    method: str | None
    remaining: int
    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    delay_s: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets bursts of concurrent clients

    def __init__(self, address: tuple[str, int], owner: LocalSlack) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left makes the late answer fail with a broken pipe: expected here.
        logger.debug("localslack: connection from %s ended abnormally", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "LocalSlack/1"

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the token is in headers, never logged
        logger.debug("localslack %s - " + format, self.address_string(), *args)

    def _handle(self) -> None:
        owner = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        if not url.path.startswith("/api/"):
            self._send(Answer(404, {"ok": False, "error": "not_found"}))
            return
        method = url.path[len("/api/") :]
        try:
            params, token = self._parse(url.query)
        except ValueError as exc:
            self._send(Answer(400, {"ok": False, "error": str(exc)}))
            return
        fault = owner._take_fault(method)
        if fault is not None:
            if fault.kind == "reset":
                owner.workspace.record(method, Answer(0, {"ok": False, "error": "connection_reset"}))
                self._reset()
                return
            if fault.kind == "delay":
                owner._stopping.wait(fault.delay_s)
            elif fault.kind in ("status", "error"):
                answer = _fault_answer(fault)
                owner.workspace.record(method, answer)
                self._send(answer)
                return
        answer = owner.workspace.call(method, token, params)
        if answer.body.get("ok") and method == "chat.postMessage" and owner._on_message is not None:
            self._notify(owner, answer)
        if fault is not None and fault.kind == "reset_after":
            self._reset()
            return
        self._send(answer)

    def _notify(self, owner: LocalSlack, answer: Answer) -> None:
        channel, ts = answer.body.get("channel"), answer.body.get("ts")
        for message in owner.workspace.messages(str(channel)):
            if message.ts == ts and owner._on_message is not None:
                try:
                    owner._on_message(message)
                except Exception:
                    logger.exception("localslack on_message callback failed")

    def _parse(self, query: str) -> tuple[dict[str, Any], str | None]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError("request_too_large")
        raw = self.rfile.read(length) if length else b""
        params: dict[str, Any] = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if raw:
            if ctype == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ValueError("invalid_json") from None
                if not isinstance(body, dict):
                    raise ValueError("invalid_json")
                params.update(body)
            elif ctype == "application/x-www-form-urlencoded":
                params.update({k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("utf-8")).items()})
            else:
                raise ValueError("invalid_form_data")
        token: str | None = None
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        elif isinstance(params.get("token"), str):
            token = params.pop("token")
        params.pop("token", None)
        return params, token

    def _send(self, answer: Answer) -> None:
        body = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response: the client cannot know what happened."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _fault_answer(fault: _Fault) -> Answer:
    if fault.kind == "error":
        status = fault.status if fault.status != 200 or fault.error != "ratelimited" else 429
        headers: tuple[tuple[str, str], ...] = ()
        if status == 429:
            headers = (
                ("Retry-After", _fmt_retry(fault.retry_after if fault.retry_after is not None else 1)),
            )
        return Answer(status, {"ok": False, "error": fault.error or "internal_error"}, headers)
    headers = ()
    if fault.retry_after is not None:
        headers = (("Retry-After", _fmt_retry(fault.retry_after)),)
    error = {429: "ratelimited"}.get(fault.status, f"http_{fault.status}")
    return Answer(fault.status, {"ok": False, "error": error}, headers)


def _fmt_retry(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class LocalSlack:
    """A Slack Web API on 127.0.0.1 for tests, soak runs and the offline demo.

    Implements ``auth.test``, ``chat.postMessage`` (token, channel, text, Block Kit limits and metadata
    checked as Slack does), ``conversations.history`` (``oldest``/``latest``/``inclusive``, ``limit``,
    cursors, ``include_all_metadata``) and ``conversations.list``; records every accepted message and every
    request.

    Args:
        token (`str`): accepted bot token (all scopes); more via `add_token`.
        channels (`Iterable[str]`): channel names the bot is a member of.
        port (`int`): 0 picks a free port.
        clock (`Callable[[], float]`): epoch seconds for message ``ts``, rate limits and outages.
        require_text (`bool`): reject messages without ``text`` (``no_text``).
        on_message (`Callable[[Message], None] | None`): called for every accepted message (the demo prints).

    Example:
        >>> with LocalSlack(channels=["model-ip"]) as slack:  # doctest: +SKIP
        ...     client = WebClient(token=slack.token, base_url=slack.base_url)
        ...     client.chat_postMessage(channel="#model-ip", text="hi")
        ...     assert slack.messages("model-ip")[0].text == "hi"
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        channels: Iterable[str] = ("model-ip",),
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        require_text: bool = True,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"LocalSlack binds loopback only, not {host!r}")
        self.token = token
        self.host = host
        self._port = port
        self._clock = clock
        self._on_message = on_message
        self.workspace = Workspace(token=token, channels=channels, clock=clock, require_text=require_text)
        self._faults: list[_Fault] = []
        self._outage: tuple[Literal["503", "reset"], float | None] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> LocalSlack:
        """Bind and serve in a daemon thread; the port is fixed for the lifetime of the object."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="localslack", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; in-flight delayed answers are released."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """Pass to ``WebClient(base_url=...)`` or ``alerts.slack.base_url``."""
        return f"http://{self.host}:{self._port}/api/"

    # ---------------------------------------------------------------------------------- workspace controls

    def add_channel(
        self, name: str, *, private: bool = False, member: bool = True, archived: bool = False
    ) -> str:
        """Create a channel and return its ID (``C0LOCAL0002``...)."""
        return self.workspace.add_channel(name, private=private, member=member, archived=archived)

    def channel_id(self, name: str) -> str:
        channel = self.workspace.channel(name)
        if channel is None:
            raise KeyError(name)
        return channel.id

    def add_token(self, token: str, *, scopes: Iterable[str] | None = None) -> None:
        """Accept another token, optionally with fewer scopes (``missing_scope`` tests)."""
        if scopes is None:
            self.workspace.add_token(token)
        else:
            self.workspace.add_token(token, scopes=scopes)

    def revoke_token(self, token: str | None = None) -> None:
        """Every later call with the token answers ``token_revoked``."""
        self.workspace.revoke_token(token or self.token)

    def rate_limit(self, per_channel_per_s: float | None = 1.0, *, burst: int = 1) -> None:
        """Emulate Slack's per-channel ``chat.postMessage`` limit (429 + ``Retry-After``); None: off."""
        self.workspace.rate_limit(per_channel_per_s, burst=burst)

    def messages(self, channel: str | None = None) -> list[Message]:
        """Accepted messages, oldest first (all channels, or one by name or ID)."""
        return self.workspace.messages(channel)

    def requests(self, method: str | None = None) -> list[RequestRecord]:
        """Every answered request, faults included."""
        return self.workspace.requests(method)

    # ---------------------------------------------------------------------------------------------- faults

    def fail(
        self,
        method: str | None = "chat.postMessage",
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (None: any) with a failure.

        ``status=429, retry_after=30`` is a rate limit; ``status=500``/``503`` a server error;
        ``error="invalid_auth"`` (or any code) an HTTP 200 ``ok:false``; ``error="ratelimited"`` a 429.
        """
        if status is None and error is None:
            raise ValueError("give status= or error=")
        kind: FaultKind = "error" if error is not None else "status"
        self._add(_Fault(kind, method, times, status=status or 200, error=error, retry_after=retry_after))

    def delay(self, method: str | None = "chat.postMessage", *, seconds: float, times: int = 1) -> None:
        """Wait ``seconds``, then answer normally: the client times out, but the call still takes effect."""
        self._add(_Fault("delay", method, times, delay_s=seconds))

    def reset(
        self, method: str | None = "chat.postMessage", *, after_effect: bool = False, times: int = 1
    ) -> None:
        """Reset the connection without answering; with ``after_effect`` the call (the post) happens first."""
        self._add(_Fault("reset_after" if after_effect else "reset", method, times))

    def outage(self, *, until: float | None = None, mode: Literal["503", "reset"] = "503") -> None:
        """Fail every call with 503 (or a reset) until clock time ``until`` (None: until `end_outage`)."""
        with self._lock:
            self._outage = (mode, until)

    def end_outage(self) -> None:
        with self._lock:
            self._outage = None

    def refuse_connections(self) -> None:
        """Close the listening socket: clients get "connection refused" until `accept_connections`."""
        self.stop()

    def accept_connections(self) -> None:
        """Listen again on the same port after `refuse_connections`."""
        self.start()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._outage = None

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            if self._outage is not None:
                mode, until = self._outage
                if until is None or self._clock() < until:
                    if mode == "reset":
                        return _Fault("reset", None, 1)
                    return _Fault("status", None, 1, status=503)
                self._outage = None
            for fault in self._faults:
                if fault.method is None or fault.method == method:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None
