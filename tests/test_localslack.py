"""The local Slack server speaks the Web API to the real slack_sdk WebClient, and injects real faults."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.client import RemoteDisconnected
from pathlib import Path

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from monitor.localslack import DEFAULT_TOKEN, LocalSlack, validate_blocks
from monitor.localslack.blocks import BlockError


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slack(clock):
    with LocalSlack(channels=["model-ip", "other"], clock=clock) as server:
        yield server


def client(slack: LocalSlack, token: str | None = None, *, timeout: int = 5) -> WebClient:
    return WebClient(token=token or slack.token, base_url=slack.base_url, timeout=timeout, retry_handlers=[])


def error_of(excinfo) -> tuple[int, str]:
    response = excinfo.value.response
    return response.status_code, response["error"]


def test_binds_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        LocalSlack(host="0.0.0.0")


def test_auth_test_and_token_checks(slack):
    assert client(slack).auth_test()["user_id"] == "U0LOCALBOT"
    with pytest.raises(SlackApiError) as exc:
        client(slack, "xoxb-wrong").auth_test()
    assert error_of(exc) == (200, "invalid_auth")
    slack.revoke_token()
    with pytest.raises(SlackApiError) as exc:
        client(slack).auth_test()
    assert error_of(exc) == (200, "token_revoked")


def test_missing_token_is_not_authed(slack):
    request = urllib.request.Request(slack.base_url + "auth.test", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read()) == {"ok": False, "error": "not_authed"}


def test_post_message_records_blocks_text_and_metadata(slack, clock):
    metadata = {"event_type": "hubsentry_alert", "event_payload": {"alert_key": "k1", "seq": 1}}
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hello *there*"}}]
    response = client(slack).chat_postMessage(
        channel="#model-ip", text="hello", blocks=blocks, metadata=metadata
    )
    assert response["ok"]
    assert response["channel"] == slack.channel_id("model-ip")
    assert response["ts"] == f"{int(clock.now)}.000000"
    (message,) = slack.messages("model-ip")
    assert message.text == "hello"
    assert message.blocks == blocks
    assert message.metadata == metadata
    assert message.alert_key == "k1"
    assert slack.messages("other") == []
    # by channel ID as well; ts strictly increases even when the clock does not move
    second = client(slack).chat_postMessage(channel=slack.channel_id("model-ip"), text="again")
    assert float(second["ts"]) > float(response["ts"])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"channel": "#nope", "text": "x"}, "channel_not_found"),
        pytest.param(
            {"channel": "#model-ip", "blocks": [{"type": "divider"}]},
            "no_text",
            marks=pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing:UserWarning"),
        ),
        ({"channel": "#model-ip", "text": "x" * 40_001}, "msg_too_long"),
        ({"channel": "#model-ip", "text": "x", "blocks": [{"type": "divider"}] * 51}, "invalid_blocks"),
        (
            {
                "channel": "#model-ip",
                "text": "x",
                "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
            },
            "invalid_blocks",
        ),
        ({"channel": "#model-ip", "text": "x", "metadata": {"event_type": "e"}}, "invalid_metadata_format"),
    ],
)
def test_post_message_rejects_what_slack_rejects(slack, kwargs, error):
    with pytest.raises(SlackApiError) as exc:
        client(slack).chat_postMessage(**kwargs)
    assert error_of(exc) == (200, error)
    assert slack.messages() == []


def test_channel_membership_and_archive(slack):
    slack.add_channel("private-ip", private=True, member=False)
    slack.add_channel("old", archived=True)
    with pytest.raises(SlackApiError) as exc:
        client(slack).chat_postMessage(channel="#private-ip", text="x")
    assert error_of(exc)[1] == "not_in_channel"
    with pytest.raises(SlackApiError) as exc:
        client(slack).chat_postMessage(channel="#old", text="x")
    assert error_of(exc)[1] == "is_archived"


def test_block_validation_details():
    with pytest.raises(BlockError) as exc:
        validate_blocks(
            [
                {"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11},
                {"type": "section", "block_id": "a", "text": {"type": "mrkdwn", "text": "s" * 3001}},
                {"type": "divider", "block_id": "a"},
                {"type": "bogus"},
                {"type": "context", "elements": []},
            ]
        )
    assert exc.value.code == "invalid_blocks"
    joined = " ".join(exc.value.details)
    for fragment in ("/blocks/0/fields", "/blocks/1/text/text", "duplicate block_id", "'bogus'", "/blocks/4"):
        assert fragment in joined
    big = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3000}}] * 5
    with pytest.raises(BlockError) as exc:
        validate_blocks(big)
    assert exc.value.code == "msg_blocks_too_long"
    with pytest.raises(BlockError) as exc:
        validate_blocks({"type": "divider"})
    assert exc.value.code == "invalid_blocks_format"


def test_history_oldest_inclusive_metadata_and_pagination(slack, clock):
    web = client(slack)
    posted = []
    for i in range(7):
        clock.now += 10
        meta = {"event_type": "hubsentry_alert", "event_payload": {"alert_key": f"k{i}"}}
        posted.append(web.chat_postMessage(channel="#model-ip", text=f"m{i}", metadata=meta)["ts"])
    channel = slack.channel_id("model-ip")
    plain = web.conversations_history(channel=channel, limit=100)
    assert [m["text"] for m in plain["messages"]] == [f"m{i}" for i in reversed(range(7))]
    assert all("metadata" not in m for m in plain["messages"])
    since = web.conversations_history(channel=channel, oldest=posted[4], include_all_metadata=True)
    assert [m["metadata"]["event_payload"]["alert_key"] for m in since["messages"]] == ["k6", "k5"]
    inclusive = web.conversations_history(channel=channel, oldest=posted[4], inclusive=True)
    assert len(inclusive["messages"]) == 3
    pages, cursor = [], None
    while True:
        page = web.conversations_history(channel=channel, limit=3, cursor=cursor)
        pages.append([m["text"] for m in page["messages"]])
        cursor = page["response_metadata"]["next_cursor"]
        if not page["has_more"]:
            assert cursor == ""
            break
    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]
    with pytest.raises(SlackApiError) as exc:
        web.conversations_history(channel="#model-ip")  # names are not accepted, as in Slack
    assert error_of(exc)[1] == "channel_not_found"
    with pytest.raises(SlackApiError) as exc:
        web.conversations_history(channel=channel, cursor="garbage!")
    assert error_of(exc)[1] == "invalid_arguments"


def test_missing_scope_answers_needed(slack):
    slack.add_token("xoxb-limited", scopes={"chat:write"})
    web = client(slack, "xoxb-limited")
    web.chat_postMessage(channel="#model-ip", text="ok")
    with pytest.raises(SlackApiError) as exc:
        web.conversations_history(channel=slack.channel_id("model-ip"))
    assert exc.value.response["error"] == "missing_scope"
    assert exc.value.response["needed"] == "channels:history"


def test_conversations_list_paginates(slack):
    for i in range(5):
        slack.add_channel(f"c{i}")
    web = client(slack)
    names, cursor = [], None
    while True:
        page = web.conversations_list(limit=2, cursor=cursor, types="public_channel")
        names += [c["name"] for c in page["channels"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert names == ["model-ip", "other", "c0", "c1", "c2", "c3", "c4"]


def test_form_encoded_requests_and_unknown_method(slack):
    body = b"channel=%23model-ip&text=form+post&token=" + DEFAULT_TOKEN.encode()
    request = urllib.request.Request(
        slack.base_url + "chat.postMessage",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["ok"] is True
    assert slack.messages()[-1].text == "form post"
    assert "token" not in slack.messages()[-1].payload
    with pytest.raises(SlackApiError) as exc:
        client(slack).api_call("chat.unknown")
    assert error_of(exc)[1] == "unknown_method"


def test_rate_limit_emulation_uses_the_clock(slack, clock):
    slack.rate_limit(1.0)
    web = client(slack)
    web.chat_postMessage(channel="#model-ip", text="1")
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="#model-ip", text="2")
    assert error_of(exc) == (429, "ratelimited")
    assert exc.value.response.headers["Retry-After"] == "1"
    web.chat_postMessage(channel="#other", text="other channel has its own bucket")
    clock.now += 1.0
    web.chat_postMessage(channel="#model-ip", text="2")
    assert [m.text for m in slack.messages("model-ip")] == ["1", "2"]


def test_injected_failures(slack):
    web = client(slack)
    slack.fail(status=429, retry_after=30)
    slack.fail(status=503)
    slack.fail(error="invalid_auth")
    slack.fail("conversations.history", status=500)
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="#model-ip", text="x")
    assert error_of(exc) == (429, "ratelimited")
    assert exc.value.response.headers["Retry-After"] == "30"
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="#model-ip", text="x")
    assert exc.value.response.status_code == 503
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="#model-ip", text="x")
    assert error_of(exc) == (200, "invalid_auth")
    web.chat_postMessage(channel="#model-ip", text="through")
    with pytest.raises(SlackApiError) as exc:
        web.conversations_history(channel=slack.channel_id("model-ip"))
    assert exc.value.response.status_code == 500
    assert [m.text for m in slack.messages()] == ["through"]
    statuses = [(r.method, r.status) for r in slack.requests()]
    assert statuses[:4] == [
        ("chat.postMessage", 429),
        ("chat.postMessage", 503),
        ("chat.postMessage", 200),
        ("chat.postMessage", 200),
    ]


def test_reset_before_and_after_effect(slack):
    web = client(slack)
    slack.reset()
    with pytest.raises((ConnectionError, RemoteDisconnected, urllib.error.URLError)):
        web.chat_postMessage(channel="#model-ip", text="lost")
    assert slack.messages() == []
    slack.reset(after_effect=True)
    with pytest.raises((ConnectionError, RemoteDisconnected, urllib.error.URLError)):
        web.chat_postMessage(channel="#model-ip", text="landed")
    assert [m.text for m in slack.messages()] == ["landed"]


def test_delay_makes_the_client_time_out_but_the_post_lands(slack):
    slack.delay(seconds=2.0)
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        client(slack, timeout=1).chat_postMessage(channel="#model-ip", text="slow")
    assert time.monotonic() - started < 1.9
    deadline = time.monotonic() + 5
    while not slack.messages() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m.text for m in slack.messages()] == ["slow"]


def test_outage_for_a_clock_period(slack, clock):
    web = client(slack)
    slack.outage(until=clock.now + 3600)
    with pytest.raises(SlackApiError) as exc:
        web.chat_postMessage(channel="#model-ip", text="x")
    assert exc.value.response.status_code == 503
    clock.now += 3600
    web.chat_postMessage(channel="#model-ip", text="after")
    slack.outage(mode="reset")
    with pytest.raises((ConnectionError, RemoteDisconnected, urllib.error.URLError)):
        web.auth_test()
    slack.end_outage()
    web.auth_test()


def test_refused_connections_then_same_port_again(slack):
    web = client(slack)
    port = slack.port
    slack.refuse_connections()
    with pytest.raises(urllib.error.URLError) as exc:
        web.auth_test()
    assert isinstance(exc.value.reason, ConnectionRefusedError)
    slack.accept_connections()
    assert slack.port == port
    assert web.auth_test()["ok"]


def test_concurrent_posts_are_all_recorded(slack):
    def post(i: int) -> None:
        client(slack).chat_postMessage(channel="#model-ip", text=f"m{i}")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = slack.messages("model-ip")
    assert sorted(m.text for m in messages) == sorted(f"m{i}" for i in range(20))
    assert len({m.ts for m in messages}) == 20


def test_on_message_callback_sees_each_post(clock):
    seen = []
    with LocalSlack(clock=clock, on_message=seen.append) as server:
        client(server).chat_postMessage(channel="#model-ip", text="hi")
    assert [m.text for m in seen] == ["hi"]


@pytest.mark.timeout(30)
def test_command_line_server_prints_messages_and_stops_on_sigterm():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.localslack", "--channel", "model-ip", "--token", "xoxb-cli-test"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base_url = re.search(r"(http://127\.0\.0\.1:\d+/api/)", first).group(1)
        web = WebClient(token="xoxb-cli-test", base_url=base_url, retry_handlers=[])
        web.chat_postMessage(
            channel="#model-ip",
            text="from the cli test",
            metadata={"event_type": "hubsentry_alert", "event_payload": {"alert_key": "abc"}},
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "alert=abc" in out
    assert "from the cli test" in out
