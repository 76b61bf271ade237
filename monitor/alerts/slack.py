"""Slack sink: Block Kit messages through slack_sdk's `WebClient`, with lookup-based crash recovery.

Why `WebClient` and a bot token rather than an incoming webhook: ``chat.postMessage`` returns the message
``ts`` (stored as the receipt, so threads and audits can point at it), raises on ``ok:false`` instead of
returning a 200-ish string, and lets us attach message ``metadata`` carrying the alert key. That metadata is
what makes delivery exactly-once: after a crash or an ambiguous failure, `SlackSink.find_delivered` reads the
channel history since the attempt started and recognises our own message by its key.

slack_sdk's own retry handlers are disabled (``retry_handlers=[]``): `RateLimitErrorRetryHandler` would sleep
``Retry-After`` seconds in the calling thread, unbounded, and a connection-error retry can duplicate a message
whose response was lost. Every retry is instead scheduled by the outbox (`monitor.alerts.delivery`), which
looks the message up first when the previous attempt may have arrived.

Bot token scopes: ``chat:write`` (post), ``channels:history`` (+ ``groups:history`` for a private channel) for
the lookup, and ``channels:read`` (+ ``groups:read``) only when the channel is configured by name instead of
by ID.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import urllib.error
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError

from monitor.alerts.model import Alert
from monitor.alerts.render import SlackMessage, render_minimal, render_slack
from monitor.alerts.sinks import DeliveryUncertainError, parse_retry_after, reveal, with_reason
from monitor.errors import ConfigError, NotifyError, PermanentNotifyError, RetryableNotifyError

__all__ = [
    "DEFAULT_BASE_URL",
    "EVENT_TYPE",
    "LOOKUP_CLOCK_SKEW",
    "SlackSink",
    "classify_slack_error",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://slack.com/api/"
EVENT_TYPE = "hubsentry_alert"
"""``metadata.event_type`` of our messages; with ``event_payload.alert_key`` it identifies the alert."""
LOOKUP_CLOCK_SKEW = timedelta(minutes=5)
"""How far before ``sending_since`` the history lookup starts: our clock and Slack's may disagree."""
_LOOKUP_PAGE = 200
_LOOKUP_MAX_PAGES = 100

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")

_RETRYABLE_CODES = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_TOO_BIG_CODES = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long"})
_HINTS = {
    "invalid_auth": "the Slack token is not valid: update the secret alerts.slack.token_env/token_file names",
    "not_authed": "no Slack token was sent: set alerts.slack.token_env or token_file",
    "token_revoked": "the Slack token was revoked: install the app again and update the secret",
    "token_expired": "the Slack token expired: rotate it and update the secret",
    "account_inactive": "the Slack bot user was deactivated: reinstall the app",
    "channel_not_found": "check alerts.slack.channel (and invite the bot to a private channel)",
    "not_in_channel": "invite the bot to the channel (/invite @<bot>)",
    "is_archived": "the channel is archived: unarchive it or change alerts.slack.channel",
    "missing_scope": "the bot token lacks a scope (chat:write, channels:history; see docs/alerts.md)",
    "invalid_blocks": "Slack rejected the message layout even after a text-only retry; please report this",
    "msg_too_long": "Slack rejected the message as too long even after a text-only retry; please report this",
}


def classify_slack_error(exc: BaseException, *, what: str) -> NotifyError:
    """Map a slack_sdk / network failure onto the notify-error hierarchy (Alertmanager ``Retrier`` style).

    * HTTP 429 or ``ratelimited`` → `RetryableNotifyError` with ``retry_after_s`` from ``Retry-After``.
    * 5xx or Slack's ``internal_error``-like codes → `DeliveryUncertainError` (Slack may have posted first).
    * timeouts, resets, dropped connections → `DeliveryUncertainError`; refused connections and DNS failures →
      `RetryableNotifyError` (nothing was sent).
    * any other ``ok:false`` (``invalid_auth``, ``token_revoked``, ``channel_not_found``, ``not_in_channel``,
      ``invalid_blocks``, ``msg_too_long``...) or HTTP 4xx → `PermanentNotifyError` with an operator hint.

    Args:
        exc (`BaseException`): what slack_sdk raised.
        what (`str`): the operation, for the message (``"slack:#model-ip chat.postMessage"``).
    """
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = response.data if isinstance(getattr(response, "data", None), dict) else {}
        code = str(data.get("error") or f"http_{status}")
        if not _ERROR_CODE.match(code):
            # slack_sdk turns a non-JSON body (an HTML error page from a proxy) into a prose "error"
            return with_reason(
                DeliveryUncertainError(f"{what}: unreadable answer from Slack (HTTP {status})"),
                "bad_response",
            )
        if status == 429 or code in ("ratelimited", "rate_limited"):
            headers = getattr(response, "headers", {}) or {}
            retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
            seconds = parse_retry_after(retry_after)
            return with_reason(
                RetryableNotifyError(
                    f"{what}: rate limited by Slack (Retry-After: {seconds if seconds is not None else '-'})",
                    retry_after_s=seconds,
                ),
                "ratelimited",
            )
        if status >= 500 or code in _RETRYABLE_CODES:
            return with_reason(
                DeliveryUncertainError(f"{what}: Slack error {code} (HTTP {status})"), code[:64]
            )
        hint = _HINTS.get(code, "see https://docs.slack.dev/reference/methods for this error code")
        needed = data.get("needed")
        if code == "missing_scope" and needed:
            hint = f"the bot token lacks scope {needed!s}: add it in the Slack app settings and reinstall"
        return with_reason(PermanentNotifyError(f"{what}: Slack answered {code}: {hint}"), code[:64])
    if isinstance(exc, SlackRequestError | SlackClientError):
        return with_reason(
            PermanentNotifyError(
                f"{what}: Slack client error {type(exc).__name__}: check alerts.slack.base_url"
            ),
            "client_error",
        )
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return with_reason(DeliveryUncertainError(f"{what}: timed out"), "timeout")
        if isinstance(reason, ConnectionRefusedError):
            return with_reason(RetryableNotifyError(f"{what}: connection refused"), "refused")
        if isinstance(reason, ConnectionError):
            return with_reason(
                DeliveryUncertainError(f"{what}: connection failed: {type(reason).__name__}"), "network"
            )
        return with_reason(RetryableNotifyError(f"{what}: network error: {reason}"), "network")
    if isinstance(exc, TimeoutError | socket.timeout):
        return with_reason(DeliveryUncertainError(f"{what}: timed out"), "timeout")
    if isinstance(exc, ConnectionRefusedError):
        return with_reason(RetryableNotifyError(f"{what}: connection refused"), "refused")
    if isinstance(exc, ConnectionError | http.client.HTTPException | OSError | ValueError):
        # ValueError: a truncated or non-JSON body slack_sdk could not parse.
        return with_reason(
            DeliveryUncertainError(f"{what}: {type(exc).__name__} talking to Slack"), "network"
        )
    return with_reason(PermanentNotifyError(f"{what}: unexpected {type(exc).__name__}: {exc}"), "unexpected")


class SlackSink:
    """Posts alerts to one Slack channel with a bot token.

    Args:
        channel (`str`): channel ID (``C0123456789``, preferred: no ``channels:read`` scope needed) or name
            (``#model-ip``).
        token (`str` | secret wrapper): bot token (``xoxb-…``); a masked wrapper from `monitor.secrets` is
            revealed only to build the client.
        base_url (`str`): Slack Web API root; point it at `monitor.localslack` in tests and the demo.
        timeout (`float`): seconds per HTTP request (connect and read).
        name (`str | None`): outbox sink name; default ``"slack:<channel>"``.
        mention_owner (`bool`): @-mention owners on high/critical alerts.
    """

    def __init__(
        self,
        channel: str,
        token: object,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        name: str | None = None,
        mention_owner: bool = True,
    ) -> None:
        if not channel or not channel.strip():
            raise ConfigError("alerts.slack.channel: is empty")
        self.channel = channel.strip()
        self.name = name or f"slack:{self.channel}"
        self._mention_owner = mention_owner
        self._channel_id: str | None = self.channel if _CHANNEL_ID.match(self.channel) else None
        self._client = WebClient(
            token=reveal(token),
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            timeout=max(1, round(timeout)),
            retry_handlers=[],
        )

    def send(self, alert: Alert) -> dict[str, Any]:
        """Post the Block Kit rendering; on ``invalid_blocks``/``msg_too_long`` retry once text-only.

        Returns:
            ``{"channel": <channel ID>, "ts": <message ts>}`` plus ``"fallback": "text"`` when the text-only
            form was what got through.

        Raises:
            `NotifyError`: retryable, uncertain or permanent; see `classify_slack_error`.
        """
        try:
            response = self._post(alert, render_slack(alert, mention_owner=self._mention_owner))
            fallback = False
        except PermanentNotifyError as exc:
            if getattr(exc, "reason", "") not in _TOO_BIG_CODES:
                raise
            logger.warning(
                "%s rejected alert %s as %s; retrying once as a text-only message",
                self.name,
                alert.alert_key[:16],
                getattr(exc, "reason", "?"),
            )
            response = self._post(alert, render_minimal(alert))
            fallback = True
        channel_id = str(response.get("channel") or self._channel_id or self.channel)
        if _CHANNEL_ID.match(channel_id):
            self._channel_id = channel_id
        receipt: dict[str, Any] = {"channel": channel_id, "ts": str(response.get("ts") or "")}
        if fallback:
            receipt["fallback"] = "text"
        return receipt

    def find_delivered(self, alert: Alert, *, since: datetime) -> dict[str, Any] | None:
        """Look for our message for ``alert`` in the channel history since ``since`` (minus clock skew).

        Messages are recognised by ``metadata.event_payload.alert_key`` (requested with
        ``include_all_metadata``), never by text, so a human quoting the alert does not count as delivery.

        Returns:
            ``{"channel", "ts", "recovered": True}`` when found, else None.
        """
        channel_id = self._resolve_channel_id()
        oldest = f"{(since - LOOKUP_CLOCK_SKEW).timestamp():.6f}"
        what = f"{self.name} conversations.history"
        cursor: str | None = None
        for _ in range(_LOOKUP_MAX_PAGES):
            try:
                page = self._client.conversations_history(
                    channel=channel_id,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=_LOOKUP_PAGE,
                    cursor=cursor,
                )
            except Exception as exc:  # classified; nothing else is expected to escape
                raise classify_slack_error(exc, what=what) from None
            for message in page.get("messages") or ():
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == EVENT_TYPE and payload.get("alert_key") == alert.alert_key:
                    return {"channel": channel_id, "ts": str(message.get("ts") or ""), "recovered": True}
            cursor = ((page.get("response_metadata") or {}).get("next_cursor")) or None
            if not page.get("has_more") or not cursor:
                return None
        logger.warning(
            "%s: stopped looking for alert %s after %d history pages; treating it as not delivered",
            self.name,
            alert.alert_key[:16],
            _LOOKUP_MAX_PAGES,
        )
        return None

    def check(self) -> dict[str, Any]:
        """``auth.test`` plus channel resolution: proves the token works and the channel exists.

        Returns:
            ``{"team", "user", "channel"}`` for ``hubsentry notify test`` to print.
        """
        try:
            auth = self._client.auth_test()
        except Exception as exc:
            raise classify_slack_error(exc, what=f"{self.name} auth.test") from None
        return {"team": auth.get("team"), "user": auth.get("user"), "channel": self._resolve_channel_id()}

    def _post(self, alert: Alert, message: SlackMessage) -> Any:
        kwargs: dict[str, Any] = {
            "channel": self._channel_id or self.channel,
            "text": message.text,
            "metadata": {
                "event_type": EVENT_TYPE,
                "event_payload": {"alert_key": alert.alert_key, "seq": alert.seq},
            },
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if message.blocks:
            kwargs["blocks"] = message.blocks_list()
        try:
            return self._client.chat_postMessage(**kwargs)
        except Exception as exc:
            raise classify_slack_error(exc, what=f"{self.name} chat.postMessage") from None

    def _resolve_channel_id(self) -> str:
        """Channel ID for history reads, which (unlike posting) do not accept names."""
        if self._channel_id:
            return self._channel_id
        wanted = self.channel.lstrip("#")
        cursor: str | None = None
        what = f"{self.name} conversations.list"
        for _ in range(_LOOKUP_MAX_PAGES):
            try:
                page = self._client.conversations_list(
                    types="public_channel,private_channel", exclude_archived=True, limit=200, cursor=cursor
                )
            except Exception as exc:
                raise classify_slack_error(exc, what=what) from None
            for channel in page.get("channels") or ():
                if channel.get("name") == wanted and channel.get("id"):
                    self._channel_id = str(channel["id"])
                    return self._channel_id
            cursor = ((page.get("response_metadata") or {}).get("next_cursor")) or None
            if not cursor:
                break
        raise with_reason(
            PermanentNotifyError(f"{what}: no channel named {wanted!r} is visible to the bot"),
            "channel_not_found",
        )

    def __repr__(self) -> str:
        return f"SlackSink(name={self.name!r})"
