"""SlackSink: the real slack_sdk WebClient against the local Slack server, with error classification."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitor.alerts.model import Alert
from monitor.alerts.sinks import DeliveryUncertainError, RecoverableSink, failure_reason
from monitor.alerts.slack import EVENT_TYPE, SlackSink
from monitor.errors import ConfigError, PermanentNotifyError, RetryableNotifyError
from monitor.findings import Finding, ScanOutcome
from monitor.localslack import LocalSlack
from monitor.secrets import Secret

TOKEN = "xoxb-4242424242-sink-test-token-value"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def make_alert(seq: int = 1, *, repo: str = "someorg/guard-ft", severity: str = "high") -> Alert:
    finding = Finding(
        protected="acme/guard",
        owner="U0123ABCD",
        verdict="derived",
        p_value=3e-41,
        log10_p=-40.5,
        null="independent init",
        transform="residual permutation + int4",
        matched="61/64 units",
        severity=severity,
    )
    outcome = ScanOutcome(hub="huggingface", repo_id=repo, commit=f"{seq:040x}", url="https://hf.co/x")
    return Alert.from_scan(outcome, finding, seq=seq, created_at=datetime(2026, 11, 27, tzinfo=UTC))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slack(clock):
    with LocalSlack(token=TOKEN, channels=["model-ip"], clock=clock) as server:
        yield server


def sink_for(
    slack: LocalSlack, *, channel: str = "#model-ip", token: object = TOKEN, timeout: float = 5
) -> SlackSink:
    return SlackSink(channel, token, base_url=slack.base_url, timeout=timeout)


def test_send_posts_blocks_text_and_metadata(slack):
    sink = sink_for(slack, token=Secret(TOKEN, source="test"))
    alert = make_alert()
    receipt = sink.send(alert)
    (message,) = slack.messages("model-ip")
    assert receipt == {"channel": slack.channel_id("model-ip"), "ts": message.ts}
    assert message.metadata == {
        "event_type": EVENT_TYPE,
        "event_payload": {"alert_key": alert.alert_key, "seq": 1},
    }
    assert message.text.startswith("<@U0123ABCD> [HIGH] acme/guard")
    assert message.blocks[0]["type"] == "header"
    assert message.payload["unfurl_links"] is False
    assert sink.name == "slack:#model-ip"
    assert isinstance(sink, RecoverableSink)
    assert TOKEN not in repr(sink)


def test_wrong_token_is_permanent_with_a_hint(slack):
    with pytest.raises(PermanentNotifyError, match=r"invalid_auth.*token_env") as exc:
        sink_for(slack, token="xoxb-not-the-right-one").send(make_alert())
    assert failure_reason(exc.value) == "invalid_auth"
    assert slack.messages() == []


@pytest.mark.parametrize("error", ["token_revoked", "channel_not_found", "not_in_channel", "is_archived"])
def test_ok_false_errors_are_permanent(slack, error):
    slack.fail(error=error)
    with pytest.raises(PermanentNotifyError) as exc:
        sink_for(slack).send(make_alert())
    assert failure_reason(exc.value) == error


def test_unknown_channel_is_permanent(slack):
    with pytest.raises(PermanentNotifyError, match="channel_not_found"):
        sink_for(slack, channel="#does-not-exist").send(make_alert())


def test_429_is_retryable_with_retry_after_and_no_sleep(slack):
    slack.fail(status=429, retry_after=120)
    started = time.monotonic()
    with pytest.raises(RetryableNotifyError) as exc:
        sink_for(slack).send(make_alert())
    assert time.monotonic() - started < 5  # the SDK's own 429 handler (which would sleep 120 s) is off
    assert exc.value.retry_after_s == 120
    assert not isinstance(exc.value, DeliveryUncertainError)
    assert failure_reason(exc.value) == "ratelimited"
    assert len(slack.requests("chat.postMessage")) == 1


def test_rate_limit_emulation_maps_to_retry_after(slack):
    slack.rate_limit(1.0)
    sink = sink_for(slack)
    sink.send(make_alert(1))
    with pytest.raises(RetryableNotifyError) as exc:
        sink.send(make_alert(2))
    assert exc.value.retry_after_s == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_uncertain(slack, status):
    slack.fail(status=status)
    with pytest.raises(DeliveryUncertainError) as exc:
        sink_for(slack).send(make_alert())
    assert failure_reason(exc.value) == f"http_{status}"
    assert len(slack.requests("chat.postMessage")) == 1  # no SDK-level retry


def test_non_json_answer_is_uncertain(slack):
    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sink = SlackSink("#model-ip", TOKEN, base_url=f"http://127.0.0.1:{server.server_address[1]}/api/")
        with pytest.raises(DeliveryUncertainError) as exc:
            sink.send(make_alert())
    finally:
        server.shutdown()
        server.server_close()
    assert failure_reason(exc.value) == "bad_response"


def test_empty_channel_is_a_config_error(slack):
    with pytest.raises(ConfigError, match=r"alerts\.slack\.channel"):
        sink_for(slack, channel=" ")


def test_connection_reset_is_uncertain_and_refused_is_not(slack):
    sink = sink_for(slack)
    slack.reset(after_effect=True)
    with pytest.raises(DeliveryUncertainError):
        sink.send(make_alert(1))
    assert len(slack.messages()) == 1  # it did land: exactly the ambiguity the outbox resolves
    slack.refuse_connections()
    try:
        with pytest.raises(RetryableNotifyError) as exc:
            sink.send(make_alert(2))
        assert not isinstance(exc.value, DeliveryUncertainError)
        assert failure_reason(exc.value) == "refused"
    finally:
        slack.accept_connections()


def test_timeout_is_uncertain(slack):
    slack.delay(seconds=2.5)
    started = time.monotonic()
    with pytest.raises(DeliveryUncertainError) as exc:
        sink_for(slack, timeout=1).send(make_alert())
    assert time.monotonic() - started < 2.4
    assert failure_reason(exc.value) == "timeout"


def test_invalid_blocks_falls_back_to_text_once(slack, caplog):
    slack.fail(error="invalid_blocks")
    alert = make_alert()
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.slack"):
        receipt = sink_for(slack).send(alert)
    assert receipt["fallback"] == "text"
    (message,) = slack.messages()
    assert message.blocks == []
    assert alert.alert_key in message.text
    assert message.alert_key == alert.alert_key  # metadata kept, so the lookup still finds it
    assert "retrying once as a text-only message" in caplog.text


def test_msg_too_long_twice_is_permanent(slack):
    slack.fail(error="msg_too_long", times=2)
    with pytest.raises(PermanentNotifyError, match="msg_too_long"):
        sink_for(slack).send(make_alert())
    assert len(slack.requests("chat.postMessage")) == 2


def test_find_delivered_by_metadata_since_a_time(slack, clock):
    sink = sink_for(slack)
    first, second = make_alert(1), make_alert(2)
    before = datetime.fromtimestamp(clock.now, UTC)
    clock.now += 600
    sink.send(first)
    for i in range(250):  # more than one history page
        clock.now += 1
        slack.workspace.call("chat.postMessage", TOKEN, {"channel": "#model-ip", "text": f"chatter {i}"})
    found = sink.find_delivered(first, since=before)
    assert found == {"channel": slack.channel_id("model-ip"), "ts": slack.messages()[0].ts, "recovered": True}
    assert sink.find_delivered(second, since=before) is None
    # Messages older than `since` (minus the clock-skew margin) are not searched.
    assert sink.find_delivered(first, since=before + timedelta(hours=2)) is None
    # A human quoting the alert text is not a delivery: only metadata counts.
    slack.workspace.call("chat.postMessage", TOKEN, {"channel": "#model-ip", "text": second.alert_key})
    assert sink.find_delivered(second, since=before) is None


def test_find_delivered_resolves_a_channel_name_once(slack):
    sink = sink_for(slack)
    sink.find_delivered(make_alert(), since=datetime(2026, 1, 1, tzinfo=UTC))
    sink.find_delivered(make_alert(), since=datetime(2026, 1, 1, tzinfo=UTC))
    assert len(slack.requests("conversations.list")) == 1
    by_id = sink_for(slack, channel=slack.channel_id("model-ip"))
    by_id.find_delivered(make_alert(), since=datetime(2026, 1, 1, tzinfo=UTC))
    assert len(slack.requests("conversations.list")) == 1


def test_find_delivered_errors(slack):
    slack.add_token("xoxb-no-history-scope", scopes={"chat:write", "channels:read"})
    limited = sink_for(slack, token="xoxb-no-history-scope")
    with pytest.raises(PermanentNotifyError, match="channels:history") as exc:
        limited.find_delivered(make_alert(), since=datetime(2026, 1, 1, tzinfo=UTC))
    assert failure_reason(exc.value) == "missing_scope"
    slack.fail("conversations.history", status=503)
    with pytest.raises(RetryableNotifyError):
        sink_for(slack, channel=slack.channel_id("model-ip")).find_delivered(
            make_alert(), since=datetime(2026, 1, 1, tzinfo=UTC)
        )


def test_check_reports_team_and_channel(slack):
    assert sink_for(slack).check() == {
        "team": "HubSentry Local",
        "user": "hubsentry",
        "channel": slack.channel_id("model-ip"),
    }


def test_token_never_in_logs_receipts_or_errors(slack, caplog):
    caplog.set_level(logging.DEBUG)
    sink = sink_for(slack, token=Secret(TOKEN, source="test"))
    receipts = [sink.send(make_alert(1))]
    errors = []
    for fault in ({"status": 429, "retry_after": 3}, {"status": 500}, {"error": "invalid_auth"}):
        slack.fail(**fault)
        try:
            sink.send(make_alert(2))
        except Exception as exc:
            errors.append(str(exc))
    slack.reset()
    try:
        sink.send(make_alert(3))
    except Exception as exc:
        errors.append(str(exc))
    everything = caplog.text + repr(receipts) + "\n".join(errors) + repr(sink)
    assert errors
    assert TOKEN not in everything
