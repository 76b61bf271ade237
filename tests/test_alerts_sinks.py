"""Log and webhook sinks, Retry-After parsing, secret handling and building sinks from the configuration."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitor.alerts.model import Alert
from monitor.alerts.sinks import (
    DeliveryUncertainError,
    LogSink,
    WebhookSink,
    build_sinks,
    failure_reason,
    parse_retry_after,
    reveal,
)
from monitor.alerts.slack import SlackSink
from monitor.config import parse_config
from monitor.errors import ConfigError, PermanentNotifyError, RetryableNotifyError
from monitor.findings import Finding, ScanOutcome
from monitor.logs import setup_logging
from monitor.secrets import Secret


def make_alert() -> Alert:
    finding = Finding(
        protected="acme/guard",
        owner="team-ip",
        verdict="derived",
        p_value=1e-12,
        log10_p=-12.0,
        null="independent init",
        transform="exact copy",
        matched="model.safetensors byte-identical",
        severity="critical",
    )
    outcome = ScanOutcome(hub="huggingface", repo_id="x/y", commit="c" * 40, url="https://hf.co/x/y")
    return Alert.from_scan(outcome, finding, seq=4, created_at=datetime(2026, 11, 27, tzinfo=UTC))


class Receiver:
    """A loopback HTTP endpoint that records webhook posts and answers what the test scripts."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict, dict]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), json.loads(body)))
                status, headers = receiver.answers.pop(0) if receiver.answers else (204, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/s3cr3t-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_log_sink_writes_one_structured_record(caplog):
    alert = make_alert()
    with caplog.at_level(logging.INFO, logger="hubsentry.alerts"):
        receipt = LogSink().send(alert)
    assert receipt["logger"] == "hubsentry.alerts"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.getMessage().startswith("ALERT [CRITICAL] acme/guard ↔ x/y")
    assert warning.alert["alert_key"] == alert.alert_key
    assert (warning.sink, warning.alert_key, warning.repo_id) == ("log", alert.alert_key, "x/y")
    assert warning.alert["severity"] == "critical"
    details = next(r for r in caplog.records if r.levelno == logging.INFO)
    assert "model.safetensors byte-identical" in details.getMessage()


def test_log_sink_through_the_json_log_format():
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging(level="INFO", fmt="json", stream=stream)
    try:
        LogSink().send(make_alert())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    first = json.loads(stream.getvalue().splitlines()[0])
    assert first["level"] == "WARNING"
    assert first["msg"].startswith("ALERT [CRITICAL]")
    assert first["sink"] == "log"
    assert first["repo_id"] == "x/y"
    assert len(first["alert_key"]) == 64


def test_webhook_posts_json_with_an_idempotency_key():
    alert = make_alert()
    with Receiver() as receiver:
        sink = WebhookSink(Secret(receiver.url, source="test"))
        assert sink.send(alert)["status"] == 204
        headers, body = receiver.posts[0]
    assert body["alert_key"] == alert.alert_key
    assert body["schema"] == "hubsentry.alert/1"
    assert headers["Idempotency-Key"] == alert.alert_key
    assert headers["Content-Type"] == "application/json"
    assert sink.name == "webhook:http://127.0.0.1"
    assert "s3cr3t" not in repr(sink)


@pytest.mark.parametrize(
    ("status", "headers", "kind", "reason"),
    [
        (429, {"Retry-After": "42"}, RetryableNotifyError, "ratelimited"),
        (503, {}, DeliveryUncertainError, "http_503"),
        (408, {}, DeliveryUncertainError, "http_408"),
        (404, {}, PermanentNotifyError, "http_404"),
        (302, {"Location": "http://127.0.0.1:1/elsewhere"}, PermanentNotifyError, "http_302"),
    ],
)
def test_webhook_classifies_answers(status, headers, kind, reason):
    with Receiver() as receiver:
        receiver.answers.append((status, headers))
        with pytest.raises(kind) as exc:
            WebhookSink(receiver.url).send(make_alert())
    assert failure_reason(exc.value) == reason
    if status == 429:
        assert exc.value.retry_after_s == 42


def test_webhook_refused_is_retryable():
    with Receiver() as receiver:
        url = receiver.url
    with pytest.raises(RetryableNotifyError) as exc:
        WebhookSink(url, timeout=2).send(make_alert())
    assert failure_reason(exc.value) == "refused"


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http://example.com/hook", "file:///etc/passwd", "not a url"]
)
def test_webhook_rejects_unsafe_urls(url):
    with pytest.raises(ConfigError):
        WebhookSink(url)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        (["7"], 7.0),
        ("-5", 0.0),
        ("999999", 6 * 3600.0),
        ("soon", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=now) == 90.0


def test_reveal():
    assert reveal("plain") == "plain"
    secret = Secret("xoxb-abc-def", source="test")
    assert reveal(secret) == "xoxb-abc-def"
    with pytest.raises(ConfigError):
        reveal(42)


def test_build_sinks_from_config():
    config = parse_config(
        {
            "alerts": {
                "slack": {
                    "channel": "#model-ip",
                    "token_env": "SLACK_X",
                    "base_url": "http://127.0.0.1:9/api",
                }
            }
        },
        environ={},
    )
    sinks = build_sinks(config.alerts, environ={"SLACK_X": "xoxb-from-env-123"})
    assert list(sinks) == list(config.alerts.sinks) == ["slack:#model-ip", "log"]
    assert isinstance(sinks["slack:#model-ip"], SlackSink)
    assert isinstance(sinks["log"], LogSink)
    with pytest.raises(ConfigError, match="SLACK_X"):
        build_sinks(config.alerts, environ={})
    quiet = parse_config({"alerts": {"log": {"enabled": False}}}, environ={})
    assert build_sinks(quiet.alerts, environ={}) == {}


def test_slack_sink_is_importable_from_sinks():
    from monitor.alerts import sinks

    assert sinks.SlackSink is SlackSink
    with pytest.raises(AttributeError):
        _ = sinks.NoSuchSink
