"""The state and method semantics of a one-workspace Slack, independent of HTTP.

`Workspace.call` takes what a Web API request carries (method, token, parameters) and returns what Slack would
answer (HTTP status, headers, JSON body). Answers follow Slack's documented shapes: HTTP 200 with
``{"ok": false, "error": ...}`` for API errors, HTTP 429 with ``Retry-After`` for rate limits. Everything is
guarded by one lock, so handler threads can call it concurrently and tests can read the recorded messages.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.localslack.blocks import BlockError, validate_blocks

__all__ = ["ALL_SCOPES", "Answer", "Channel", "Message", "RequestRecord", "Workspace"]

ALL_SCOPES = frozenset({"chat:write", "channels:history", "groups:history", "channels:read", "groups:read"})
TEAM_ID = "T0LOCAL01"
BOT_USER_ID = "U0LOCALBOT"
BOT_ID = "B0LOCALBOT"
MAX_TEXT = 40_000


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: status, extra headers and a JSON body."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Channel:
    """A channel as the bot sees it."""

    id: str
    name: str
    is_private: bool = False
    is_member: bool = True
    is_archived: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": not self.is_private,
            "is_group": self.is_private,
            "is_private": self.is_private,
            "is_member": self.is_member,
            "is_archived": self.is_archived,
        }


@dataclass(frozen=True, slots=True)
class Message:
    """A message the workspace accepted.

    Attributes:
        channel (`str`): channel ID.
        ts (`str`): Slack timestamp (``"<epoch seconds>.<micros>"``), unique per channel.
        text (`str`), blocks (`list`), metadata (`dict | None`): as posted.
        payload (`dict`): every parameter of the request, for assertions.
    """

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    metadata: dict[str, Any] | None
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def alert_key(self) -> str | None:
        """``metadata.event_payload.alert_key`` when the message carries one."""
        payload = (self.metadata or {}).get("event_payload") or {}
        key = payload.get("alert_key")
        return str(key) if key is not None else None

    def as_json(self, *, include_metadata: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": "A0LOCALAPP",
            "text": self.text,
            "ts": self.ts,
            "team": TEAM_ID,
        }
        if self.blocks:
            out["blocks"] = self.blocks
        if include_metadata and self.metadata is not None:
            out["metadata"] = self.metadata
        return out


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as answered (faults included): method, HTTP status, Slack error code, clock time."""

    method: str
    status: int
    error: str | None
    at: float


class Workspace:
    """Channels, tokens, scopes, messages and the optional per-channel rate limit.

    Args:
        token (`str`): the bot token that is accepted.
        channels (`Iterable[str]`): names of channels the bot is a member of.
        clock (`Callable[[], float]`): epoch seconds; message ``ts`` and rate limits use it, so a test can
            run an "hour" in milliseconds.
        require_text (`bool`): answer ``no_text`` when ``text`` is missing even if blocks are present (Slack
            only warns, but a message without fallback text is silent in notifications).
    """

    _METHOD_SCOPES: Mapping[str, str | None] = {
        "auth.test": None,
        "chat.postMessage": "chat:write",
        "conversations.history": "channels:history",
        "conversations.list": "channels:read",
    }

    def __init__(
        self,
        *,
        token: str,
        channels: Iterable[str],
        clock: Callable[[], float],
        require_text: bool = True,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._require_text = require_text
        self._tokens: dict[str, set[str]] = {token: set(ALL_SCOPES)}
        self._revoked: set[str] = set()
        self._channels: dict[str, Channel] = {}
        self._messages: list[Message] = []
        self._requests: list[RequestRecord] = []
        self._last_ts_micros = 0
        self._rate_per_s: float | None = None
        self._burst = 1.0
        self._buckets: dict[str, tuple[float, float]] = {}
        for name in channels:
            self.add_channel(name)

    # ----------------------------------------------------------------------------------------- test controls

    def add_channel(
        self, name: str, *, private: bool = False, member: bool = True, archived: bool = False
    ) -> str:
        with self._lock:
            name = name.lstrip("#")
            for channel in self._channels.values():
                if channel.name == name:
                    return channel.id
            prefix = "G" if private else "C"
            channel_id = f"{prefix}0LOCAL{len(self._channels) + 1:04d}"
            self._channels[channel_id] = Channel(channel_id, name, private, member, archived)
            return channel_id

    def channel(self, name_or_id: str) -> Channel | None:
        with self._lock:
            return self._find_channel(name_or_id)

    def add_token(self, token: str, *, scopes: Iterable[str] = ALL_SCOPES) -> None:
        with self._lock:
            self._tokens[token] = set(scopes)
            self._revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def set_scopes(self, token: str, scopes: Iterable[str]) -> None:
        with self._lock:
            self._tokens[token] = set(scopes)

    def rate_limit(self, per_channel_per_s: float | None, *, burst: int = 1) -> None:
        with self._lock:
            self._rate_per_s = per_channel_per_s
            self._burst = float(max(1, burst))
            self._buckets.clear()

    def messages(self, channel: str | None = None) -> list[Message]:
        with self._lock:
            if channel is None:
                return list(self._messages)
            found = self._find_channel(channel)
            wanted = found.id if found else channel
            return [m for m in self._messages if m.channel == wanted]

    def requests(self, method: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._requests if method is None or r.method == method]

    def record(self, method: str, answer: Answer) -> None:
        with self._lock:
            error = answer.body.get("error") if not answer.body.get("ok", False) else None
            self._requests.append(RequestRecord(method, answer.status, error, self._clock()))

    # ------------------------------------------------------------------------------------------------- API

    def call(self, method: str, token: str | None, params: Mapping[str, Any]) -> Answer:
        """Answer one Web API call (after transport-level faults were applied by the server)."""
        with self._lock:
            answer = self._call(method, token, params)
            self.record(method, answer)
            return answer

    def _call(self, method: str, token: str | None, params: Mapping[str, Any]) -> Answer:
        if method not in self._METHOD_SCOPES:
            return _error("unknown_method")
        if not token:
            return _error("not_authed")
        if token in self._revoked:
            return _error("token_revoked")
        scopes = self._tokens.get(token)
        if scopes is None:
            return _error("invalid_auth")
        if method == "auth.test":
            return _ok(
                url="https://hubsentry-local.slack.com/",
                team="HubSentry Local",
                user="hubsentry",
                team_id=TEAM_ID,
                user_id=BOT_USER_ID,
                bot_id=BOT_ID,
                is_enterprise_install=False,
            )
        if method == "conversations.list":
            return self._need(scopes, "channels:read") or self._list(params)
        if method == "chat.postMessage":
            return self._need(scopes, "chat:write") or self._post(params)
        return self._history(scopes, params)

    @staticmethod
    def _need(scopes: set[str], scope: str) -> Answer | None:
        if scope in scopes:
            return None
        return _error("missing_scope", needed=scope, provided=",".join(sorted(scopes)))

    def _find_channel(self, name_or_id: str) -> Channel | None:
        if name_or_id in self._channels:
            return self._channels[name_or_id]
        name = name_or_id.lstrip("#")
        return next((c for c in self._channels.values() if c.name == name), None)

    def _post(self, params: Mapping[str, Any]) -> Answer:
        channel = self._find_channel(str(params.get("channel") or ""))
        if channel is None:
            return _error("channel_not_found")
        if channel.is_archived:
            return _error("is_archived")
        if not channel.is_member:
            return _error("not_in_channel")
        text = params.get("text")
        blocks_raw = _maybe_json(params.get("blocks"))
        if text is not None and not isinstance(text, str):
            return _error("invalid_arguments")
        if not text and (self._require_text or not blocks_raw):
            return _error("no_text")
        if text and len(text) > MAX_TEXT:
            return _error("msg_too_long")
        blocks: list[dict[str, Any]] = []
        if blocks_raw is not None:
            try:
                blocks = validate_blocks(blocks_raw)
            except BlockError as exc:
                return _error(exc.code, errors=exc.details)
        metadata = _maybe_json(params.get("metadata"))
        if metadata is not None and not (
            isinstance(metadata, dict)
            and isinstance(metadata.get("event_type"), str)
            and metadata["event_type"]
            and isinstance(metadata.get("event_payload"), dict)
        ):
            return _error("invalid_metadata_format")
        limited = self._take_rate_token(channel.id)
        if limited is not None:
            return limited
        ts = self._next_ts()
        message = Message(channel.id, ts, text or "", blocks, metadata, dict(params))
        self._messages.append(message)
        return _ok(channel=channel.id, ts=ts, message=message.as_json(include_metadata=False))

    def _history(self, scopes: set[str], params: Mapping[str, Any]) -> Answer:
        channel = self._channels.get(str(params.get("channel") or ""))  # IDs only, as Slack
        if channel is None:
            return _error("channel_not_found")
        denied = self._need(scopes, "groups:history" if channel.is_private else "channels:history")
        if denied is not None:
            return denied
        if not channel.is_member:
            return _error("not_in_channel")
        try:
            oldest = _ts_micros(params.get("oldest"), default=0)
            latest = _ts_micros(params.get("latest"), default=None)
            limit = _int_param(params.get("limit"), default=100, low=1, high=999)
            offset = _decode_cursor(params.get("cursor"))
        except ValueError:
            return _error("invalid_arguments")
        inclusive = _truthy(params.get("inclusive"))
        include_metadata = _truthy(params.get("include_all_metadata"))

        def inside(m: Message) -> bool:
            t = _ts_micros(m.ts, default=0)
            above = t >= oldest if inclusive else t > oldest
            below = latest is None or (t <= latest if inclusive else t < latest)
            return above and below

        selected = sorted(
            (m for m in self._messages if m.channel == channel.id and inside(m)),
            key=lambda m: _ts_micros(m.ts, default=0),
            reverse=True,
        )
        page = selected[offset : offset + limit]
        has_more = offset + limit < len(selected)
        body: dict[str, Any] = {
            "messages": [m.as_json(include_metadata=include_metadata) for m in page],
            "has_more": has_more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": _encode_cursor(offset + limit) if has_more else ""},
        }
        return _ok(**body)

    def _list(self, params: Mapping[str, Any]) -> Answer:
        try:
            limit = _int_param(params.get("limit"), default=100, low=1, high=1000)
            offset = _decode_cursor(params.get("cursor"))
        except ValueError:
            return _error("invalid_arguments")
        types = set(str(params.get("types") or "public_channel").split(","))
        exclude_archived = _truthy(params.get("exclude_archived"))
        selected = [
            c
            for c in self._channels.values()
            if ("private_channel" if c.is_private else "public_channel") in types
            and not (exclude_archived and c.is_archived)
        ]
        page = selected[offset : offset + limit]
        more = offset + limit < len(selected)
        return _ok(
            channels=[c.as_json() for c in page],
            response_metadata={"next_cursor": _encode_cursor(offset + limit) if more else ""},
        )

    def _take_rate_token(self, channel_id: str) -> Answer | None:
        """Token bucket per channel (Slack: about one message per second per channel, short bursts)."""
        if self._rate_per_s is None:
            return None
        now = self._clock()
        tokens, last = self._buckets.get(channel_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate_per_s)
        if tokens < 1.0:
            self._buckets[channel_id] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self._rate_per_s))
            return Answer(429, {"ok": False, "error": "ratelimited"}, (("Retry-After", str(wait)),))
        self._buckets[channel_id] = (tokens - 1.0, now)
        return None

    def _next_ts(self) -> str:
        micros = max(int(self._clock() * 1_000_000), self._last_ts_micros + 1)
        self._last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _ok(**fields: Any) -> Answer:
    return Answer(200, {"ok": True, **fields})


def _error(code: str, **extra: Any) -> Answer:
    return Answer(200, {"ok": False, "error": code, **extra})


def _maybe_json(value: Any) -> Any:
    """Form-encoded requests carry ``blocks``/``metadata`` as JSON strings; JSON requests as objects."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes") if value is not None else False


def _ts_micros(value: Any, *, default: int | None) -> Any:
    if value is None or value == "":
        return default
    text = str(value)
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"bad ts {text!r}")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6] or 0)


def _int_param(value: Any, *, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    return min(max(int(value), low), high)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(value: Any) -> int:
    if not value:
        return 0
    raw = base64.urlsafe_b64decode(str(value).encode()).decode()
    prefix, _, number = raw.partition(":")
    if prefix != "offset" or not number.isdigit():
        raise ValueError("bad cursor")
    return int(number)
