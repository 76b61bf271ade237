"""Where alerts go: the `Sink` protocol, the log and webhook sinks, and the failures delivery branches on.

A sink does one thing: deliver one rendered alert, once, and either return a receipt (stored in the outbox so
the delivery can be audited and found again) or raise a `NotifyError` subclass that says what to do next::

    NotifyError
    ├── RetryableNotifyError(retry_after_s)  429, 5xx, network: the outbox schedules another attempt
    │   └── DeliveryUncertainError           timeout/reset/5xx after the request left: it may have arrived,
    │                                        so look it up (`RecoverableSink.find_delivered`) before resending
    └── PermanentNotifyError                 revoked token, unknown channel, rejected payload: operator acts

Every error raised here carries a short ``reason`` attribute (``"ratelimited"``, ``"token_revoked"``,
``"timeout"``...) used as the metrics label and shown in ``hubsentry status``. Sinks never sleep for a
rate limit: the outbox owns retry timing, so one slow channel cannot block the scheduler.

The Slack sink lives in `monitor.alerts.slack` (it is the largest);
``from monitor.alerts.sinks import SlackSink`` works too, resolved lazily so the two modules do not import
each other at load time.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from monitor import __version__
from monitor.alerts.model import Alert
from monitor.alerts.render import render_json, render_text, summary_line
from monitor.errors import ConfigError, NotifyError, PermanentNotifyError, RetryableNotifyError

if TYPE_CHECKING:
    from monitor.config import AlertsConfig

__all__ = [
    "DeliveryUncertainError",
    "LogSink",
    "RecoverableSink",
    "Sink",
    "WebhookSink",
    "build_sinks",
    "failure_reason",
    "parse_retry_after",
    "reveal",
    "with_reason",
]

_E = TypeVar("_E", bound=NotifyError)
_USER_AGENT = f"hubsentry/{__version__}"
_MAX_RETRY_AFTER_S = 6 * 3600.0


class Sink(Protocol):
    """Anything that can deliver one alert.

    Attributes:
        name (`str`): the outbox ``sink`` value this sink consumes (``"slack:#model-ip"``, ``"log"``).
    """

    name: str

    def send(self, alert: Alert) -> dict[str, Any]:
        """Deliver ``alert`` once and return a JSON-serialisable receipt, or raise a `NotifyError`."""
        ...


@runtime_checkable
class RecoverableSink(Sink, Protocol):
    """A sink that can tell whether an earlier, interrupted attempt actually arrived.

    Delivery calls `find_delivered` before re-sending a row whose previous attempt may have reached the
    receiver (process killed mid-send, timeout, connection reset), which turns at-least-once into
    exactly-once for that sink.
    """

    def find_delivered(self, alert: Alert, *, since: datetime) -> dict[str, Any] | None:
        """Receipt of a message for ``alert`` sent at or after ``since``, or None when there is none.

        Raises:
            `RetryableNotifyError`: the receiver cannot be asked right now (try again later).
            `PermanentNotifyError`: the receiver can never be asked (e.g. missing read scope).
        """
        ...


class DeliveryUncertainError(RetryableNotifyError):
    """The request may have reached the receiver before it failed (timeout, reset, 5xx).

    Delivery keeps the row's ``sending_since`` so the next attempt first looks the message up instead of
    blindly sending a duplicate.
    """


def failure_reason(exc: BaseException) -> str:
    """Short, label-safe reason of a delivery failure (the ``reason`` attribute, else the class name)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason[:64]
    return type(exc).__name__


def with_reason(exc: _E, reason: str) -> _E:
    """Attach the short ``reason`` label (see `failure_reason`) to a notify error and return it."""
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def parse_retry_after(value: object, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or malformed.

    Hostile or broken servers send negative, huge or garbage values: the result is clamped to
    [0, 6 h] so one bad header can neither hot-loop nor park a sink for days.
    """
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def reveal(secret: object) -> str:
    """The plain value of a secret passed as `str` or as a masked wrapper (``reveal()``/``value``).

    Sinks keep the wrapper and reveal it only when building the client, so the token never sits in a
    sink's attributes, repr or receipts.
    """
    if isinstance(secret, str):
        return secret
    for attr in ("reveal", "get_secret_value", "get"):
        method = getattr(secret, attr, None)
        if callable(method):
            value = method()
            if isinstance(value, str):
                return value
    value = getattr(secret, "value", None)
    if isinstance(value, str):
        return value
    raise ConfigError(f"secret of type {type(secret).__name__} cannot be revealed as text")


class LogSink:
    """Writes each alert as one structured log record (logger ``hubsentry.alerts``, level WARNING).

    The message is the one-line summary plus key and seq; the record carries the context fields that
    `monitor.logs` emits as JSON fields (``sink``, ``alert_key``, ``hub``, ``repo_id``, ``commit``) and the
    full JSON rendering as ``record.alert`` for custom formatters. A multi-line plain rendering follows at
    INFO for humans reading the journal. Logging cannot meaningfully fail, so this sink is the floor under
    every other one.
    """

    def __init__(
        self, *, name: str = "log", logger: logging.Logger | None = None, level: int = logging.WARNING
    ) -> None:
        self.name = name
        self._logger = logger or logging.getLogger("hubsentry.alerts")
        self._level = level

    def send(self, alert: Alert) -> dict[str, Any]:
        payload = render_json(alert)
        self._logger.log(
            self._level,
            "ALERT %s key=%s seq=%d",
            summary_line(alert),
            alert.alert_key,
            alert.seq,
            extra={
                "sink": self.name,
                "alert_key": alert.alert_key,
                "hub": alert.hub,
                "repo_id": alert.repo_id,
                "commit": alert.commit,
                "alert": payload,
            },
        )
        self._logger.info("alert details\n%s", render_text(alert), extra={"alert_key": alert.alert_key})
        return {"logger": self._logger.name, "logged_at": datetime.now(UTC).isoformat(timespec="seconds")}

    def __repr__(self) -> str:
        return f"LogSink(name={self.name!r})"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A POST must not silently turn into a GET somewhere else; a redirect is a configuration error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class WebhookSink:
    """POSTs the JSON rendering (`render_json`) of each alert to a configured URL.

    The URL is treated as a secret (most webhook URLs embed a credential), so the sink's name shows only
    scheme and host. Each request carries ``Idempotency-Key: <alert_key>`` so a receiver can drop the
    duplicate that at-least-once delivery may produce after a timeout. HTTPS is required except on loopback.

    Classification: 2xx delivered; 429 retry after ``Retry-After``; 408/5xx and timeouts/resets retry with a
    resend (`DeliveryUncertainError`); connection refused/DNS retry; any other status is permanent.
    """

    def __init__(
        self,
        url: object,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._url = url
        parsed = urllib.parse.urlsplit(reveal(url))
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise ConfigError("alerts.webhook.url: expected an http(s) URL")
        if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError("alerts.webhook.url: plain http is allowed only on loopback; use https")
        self.name = name or f"webhook:{parsed.scheme}://{parsed.hostname}"
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._opener = urllib.request.build_opener(_NoRedirect())

    def send(self, alert: Alert) -> dict[str, Any]:
        body = json.dumps(render_json(alert), allow_nan=False, separators=(",", ":")).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme validated in __init__
            reveal(self._url),
            data=body,
            method="POST",
            headers={
                **self._headers,
                "Content-Type": "application/json",
                "User-Agent": _USER_AGENT,
                "Idempotency-Key": alert.alert_key,
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status = response.status
                response.read(65536)
        except urllib.error.HTTPError as exc:
            raise self._classify_status(exc.code, exc.headers.get("Retry-After")) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                raise with_reason(DeliveryUncertainError(f"{self.name}: timed out"), "timeout") from None
            if isinstance(reason, ConnectionRefusedError):
                raise with_reason(
                    RetryableNotifyError(f"{self.name}: connection refused"), "refused"
                ) from None
            raise with_reason(
                RetryableNotifyError(f"{self.name}: network error: {reason}"), "network"
            ) from None
        except TimeoutError:
            raise with_reason(DeliveryUncertainError(f"{self.name}: timed out"), "timeout") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise with_reason(
                DeliveryUncertainError(f"{self.name}: connection failed: {type(exc).__name__}"), "network"
            ) from None
        if not 200 <= status < 300:
            raise self._classify_status(status, None)
        return {"status": status, "url_host": self.name.split(":", 1)[1]}

    def _classify_status(self, status: int, retry_after: object) -> NotifyError:
        if status == 429:
            return with_reason(
                RetryableNotifyError(
                    f"{self.name}: HTTP 429 rate limited", retry_after_s=parse_retry_after(retry_after)
                ),
                "ratelimited",
            )
        if status == 408 or status >= 500:
            return with_reason(DeliveryUncertainError(f"{self.name}: HTTP {status}"), f"http_{status}")
        return with_reason(
            PermanentNotifyError(
                f"{self.name}: HTTP {status}; the receiver rejected the alert (check alerts.webhook.url)"
            ),
            f"http_{status}",
        )

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r})"


def build_sinks(config: AlertsConfig, *, environ: Mapping[str, str] | None = None) -> dict[str, Sink]:
    """The sinks a configuration names, keyed by their outbox sink name (``config.sinks``).

    Args:
        config (`AlertsConfig`): the ``[alerts]`` section.
        environ (`Mapping[str, str] | None`): environment for ``token_env`` (default: the process's).

    Raises:
        `ConfigError`: Slack is configured but its token is not set (the message names the key).
    """
    from monitor.alerts.slack import SlackSink
    from monitor.secrets import resolve_secret

    sinks: dict[str, Sink] = {}
    if config.slack is not None:
        token = resolve_secret(config.slack.token, environ=environ)
        if token is None:
            raise ConfigError(
                f"alerts.slack: the bot token is not set ({config.slack.token.describe()}); "
                "alerts would pile up in the outbox"
            )
        sinks[config.slack.sink] = SlackSink(
            config.slack.channel,
            token,
            base_url=config.slack.base_url,
            timeout=config.slack.timeout_s,
            name=config.slack.sink,
        )
    if config.log.enabled:
        sinks["log"] = LogSink(name="log")
    return sinks


def __getattr__(name: str) -> Any:
    if name == "SlackSink":
        from monitor.alerts.slack import SlackSink

        return SlackSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
