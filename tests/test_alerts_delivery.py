"""The outbox consumer against a real store, the real Slack client and the local Slack server.

Covers: in-order delivery per sink, 429 + Retry-After, 5xx, permanent errors → dead letters, an hour-long
outage on an injected clock, crashes between "sending" and "delivered" (simulated and a real kill -9),
status, metrics, requeue and ``notify test``; and that the Slack token never reaches logs, receipts or the DB.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.alerts import outbox
from monitor.alerts.delivery import (
    DEFAULT_POLICY,
    DeliveryReport,
    RetryPolicy,
    deliver_due,
    delivery_status,
    notify_test,
    requeue_dead,
    retry_delay,
)
from monitor.alerts.model import Alert
from monitor.alerts.sinks import LogSink
from monitor.alerts.slack import SlackSink
from monitor.errors import PermanentNotifyError
from monitor.findings import Finding, ScanOutcome
from monitor.localslack import LocalSlack
from monitor.metrics import Metrics
from monitor.secrets import Secret
from monitor.store.db import Store, from_iso, to_iso
from monitor.store.queue import NewItem, claim_due, enqueue
from monitor.store.results import record_outcome

TOKEN = "xoxb-777777777-delivery-test-token"
SLACK = "slack:#model-ip"
SINKS = (SLACK, "log")
POLICY = RetryPolicy(base_s=15, max_s=600, jitter=0.25, max_per_run=500)


class Clock:
    """One fake time for the consumer (datetime) and the local Slack server (epoch seconds)."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def epoch(self) -> float:
        return self.t.timestamp()

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "hubsentry.db") as s:
        yield s


@pytest.fixture
def slack(clock):
    with LocalSlack(token=TOKEN, channels=["model-ip"], clock=clock.epoch) as server:
        yield server


@pytest.fixture
def sinks(slack):
    return {
        SLACK: SlackSink("#model-ip", Secret(TOKEN, source="test"), base_url=slack.base_url, timeout=2),
        "log": LogSink(),
    }


_counter = iter(range(1, 10**6))


def add_alerts(store: Store, clock: Clock, n: int, *, sinks=SINKS, severity: str = "high") -> list[str]:
    """Scan outcomes recorded through the store's real `record_outcome` (alert + outbox rows, one tx)."""
    keys: list[str] = []
    for _ in range(n):
        i = next(_counter)
        finding = Finding(
            protected="acme/guard",
            owner="U0123ABCD",
            verdict="derived",
            p_value=1e-30,
            log10_p=-30.0,
            null="independent init",
            transform="fine-tune",
            matched="64/64 units",
            severity=severity,
        )
        outcome = ScanOutcome(
            hub="huggingface",
            repo_id=f"suspect/model-{i}",
            commit=f"{i:040x}",
            url=f"https://huggingface.co/suspect/model-{i}/tree/{i:040x}",
            findings=(finding,),
            reproduce=f"hubsentry compare acme/guard suspect/model-{i}",
        )

        def fn(db, outcome=outcome):
            enqueue(db, [NewItem(outcome.hub, outcome.repo_id, outcome.commit)], now=clock())
            (item,) = claim_due(db, owner="w", limit=1, lease_s=60, max_attempts=3, now=clock())
            return record_outcome(db, item, outcome, sinks=sinks, owner="w", now=clock())

        keys += store.write(fn).new_alerts
    return keys


def rows(store: Store, sink: str = SLACK) -> list[dict]:
    with store.read() as db:
        return list(
            db.query(
                "SELECT o.*, a.seq FROM outbox o JOIN alerts a USING (alert_key) "
                "WHERE o.sink = ? ORDER BY a.seq",
                [sink],
            )
        )


def slack_keys(slack: LocalSlack) -> list[str | None]:
    return [m.alert_key for m in slack.messages("model-ip")]


def run(store, sinks, clock, **kw) -> DeliveryReport:
    return deliver_due(store, sinks, threading.Event(), now=clock, policy=POLICY, rng=random.Random(1), **kw)


def drain(store, sinks, clock, *, step_s: float = 30.0, max_rounds: int = 2000) -> int:
    """Run the consumer on advancing fake time until nothing is left; returns the rounds used."""
    for rounds in range(1, max_rounds):
        run(store, sinks, clock)
        if not any(r["state"] in ("pending", "sending") for name in sinks for r in rows(store, name)):
            return rounds
        clock.advance(step_s)
    raise AssertionError("outbox did not drain")


# ------------------------------------------------------------------------------------------------ basics


def test_delivers_every_alert_to_every_sink_in_seq_order(store, sinks, slack, clock, caplog):
    keys = add_alerts(store, clock, 5)
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="hubsentry.alerts"):
        report = run(store, sinks, clock, metrics=metrics)
    assert report.delivered == 10
    assert slack_keys(slack) == keys
    for row in rows(store):
        assert row["state"] == "delivered"
        assert row["attempts"] == 1
        receipt = json.loads(row["receipt_json"])
        assert receipt["channel"] == slack.channel_id("model-ip")
        assert receipt["ts"]
    assert [r["state"] for r in rows(store, "log")] == ["delivered"] * 5
    assert caplog.text.count("ALERT [HIGH] acme/guard") == 5
    sample = metrics.registry.get_sample_value
    assert sample("hubsentry_alerts_sent_total", {"sink": SLACK, "severity": "high"}) == 5
    assert sample("hubsentry_alerts_sent_total", {"sink": "log", "severity": "high"}) == 5
    assert (
        report.as_json()
        == vars(report)
        == {
            "delivered": 10,
            "recovered": 0,
            "retried": 0,
            "dead": 0,
            "blocked": {},
            "skipped": False,
            "next_attempt_at": None,  # nothing left waiting
        }
    )
    # Nothing left: a second run does nothing and sends nothing twice.
    assert not run(store, sinks, clock).anything
    assert len(slack.messages()) == 5


def test_429_retry_after_blocks_the_sink_then_delivers_once_in_order(store, sinks, slack, clock):
    keys = add_alerts(store, clock, 3)
    slack.fail(status=429, retry_after=120)
    report = run(store, sinks, clock)
    assert report.retried == 1
    assert report.delivered == 3  # the log sink is not held up by Slack
    head = rows(store)[0]
    assert head["state"] == "pending"
    assert head["sending_since"] is None  # a 429 means nothing was posted: no lookup needed
    wait = (from_iso(head["next_attempt_at"]) - clock()).total_seconds()
    assert 120 <= wait <= 132
    assert "rate limited" in head["last_error"]
    assert all(r["state"] == "pending" for r in rows(store))  # rows behind the head wait too
    clock.advance(60)
    assert run(store, sinks, clock).blocked[SLACK] == f"next attempt at {head['next_attempt_at']}"
    assert slack.messages() == []
    clock.advance(75)
    run(store, sinks, clock)
    assert slack_keys(slack) == keys
    assert len(slack.requests("conversations.history")) == 0


def test_the_report_says_when_the_earliest_blocked_row_may_go(store, sinks, slack, clock):
    """The daemon runs the delivery again at `next_attempt_at`: a Retry-After of 1 s costs about 1 s."""
    add_alerts(store, clock, 3, sinks=(SLACK,))
    slack.rate_limit(1.0, burst=1)
    report = run(store, {SLACK: sinks[SLACK]}, clock)
    assert (report.delivered, report.retried) == (1, 1)  # the second post hit the channel's limit
    head = rows(store)[1]
    assert report.next_attempt_at == head["next_attempt_at"]
    assert 1.0 <= (from_iso(report.next_attempt_at) - clock()).total_seconds() <= 1.1
    clock.advance(1.1)
    report = run(store, {SLACK: sinks[SLACK]}, clock)
    assert report.delivered == 1
    assert rows(store)[1]["state"] == "delivered"
    clock.advance(1.1)
    assert run(store, {SLACK: sinks[SLACK]}, clock).next_attempt_at is None  # the last one went out
    assert len(slack.messages()) == 3
    small = RetryPolicy(base_s=15, max_s=600, jitter=0.25, max_per_run=2)
    add_alerts(store, clock, 3, sinks=(SLACK,))
    slack.rate_limit(None)
    capped = deliver_due(store, {SLACK: sinks[SLACK]}, threading.Event(), now=clock, policy=small)
    assert capped.delivered == 2
    assert capped.next_attempt_at == to_iso(clock())  # stopped at max_per_run: the rest is due now


def test_backoff_follows_the_sinks_failure_streak_not_the_head_rows_history(store, sinks, slack, clock):
    """Rate-limit answers are obeyed exactly and not counted; a crash-interrupted attempt is no failure; a
    success ends the streak. Before, the head row's lifetime attempt count set the backoff: six 429s and two
    crashes made the next 500 wait the 600 s maximum."""
    add_alerts(store, clock, 2, sinks=(SLACK,))
    sink = {SLACK: sinks[SLACK]}
    slack.fail(status=429, retry_after=1, times=6)
    for _ in range(6):
        report = run(store, sink, clock)
        assert report.retried == 1
        clock.advance(1.2)
    head = outbox.head_row(store, SLACK)
    for _ in range(2):  # two daemons killed mid-send, before Slack answered
        outbox.mark_sending(store, head["id"], at=clock())
        clock.advance(DEFAULT_POLICY.base_s + 1)
    slack.outage(until=clock.epoch() + 10_000)
    run(store, sink, clock)  # lookup fails: the sink's first failure
    row = rows(store)[0]
    assert row["attempts"] == 9  # 6 rate-limited posts, 2 crashed sends, 1 lookup
    assert 0.75 * 15 <= (from_iso(row["next_attempt_at"]) - clock()).total_seconds() <= 15
    assert {s.sink: s for s in delivery_status(store)}[SLACK].consecutive_failures == 1
    clock.advance(16)
    run(store, sink, clock)  # second consecutive failure: 30 s
    row = rows(store)[0]
    assert 0.75 * 30 <= (from_iso(row["next_attempt_at"]) - clock()).total_seconds() <= 30
    slack.end_outage()
    clock.advance(31)
    assert run(store, sink, clock).delivered == 2
    assert {s.sink: s for s in delivery_status(store)}[SLACK].consecutive_failures == 0
    # the next outage starts from the base delay again
    add_alerts(store, clock, 1, sinks=(SLACK,))
    slack.fail(status=503)
    run(store, sink, clock)
    row = rows(store)[-1]
    assert 0.75 * 15 <= (from_iso(row["next_attempt_at"]) - clock()).total_seconds() <= 15


def test_server_error_is_looked_up_before_the_resend(store, sinks, slack, clock):
    (key,) = add_alerts(store, clock, 1)
    slack.fail(status=500)
    run(store, sinks, clock)
    (row,) = rows(store)
    assert row["state"] == "pending"
    assert row["sending_since"] is not None  # a 500 may have posted: look it up first
    clock.advance(POLICY.base_s)
    run(store, sinks, clock)
    assert slack_keys(slack) == [key]
    assert len(slack.requests("conversations.history")) == 1
    assert rows(store)[0]["attempts"] == 2


def test_lost_response_after_the_post_is_not_sent_twice(store, sinks, slack, clock):
    (key,) = add_alerts(store, clock, 1)
    slack.reset(after_effect=True)  # Slack posts, then the connection dies before the answer
    run(store, sinks, clock)
    assert slack_keys(slack) == [key]
    assert rows(store)[0]["state"] == "pending"
    clock.advance(POLICY.base_s)
    report = run(store, sinks, clock)
    assert report.recovered == 1
    assert slack_keys(slack) == [key]
    (row,) = rows(store)
    assert row["state"] == "delivered"
    assert json.loads(row["receipt_json"]) == {
        "channel": slack.channel_id("model-ip"),
        "recovered": True,
        "ts": slack.messages()[0].ts,
    }


def test_permanent_errors_dead_letter_loudly_and_delivery_continues(store, sinks, slack, clock, caplog):
    keys = add_alerts(store, clock, 3)
    slack.fail(error="channel_not_found")
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="monitor.alerts.delivery"):
        report = run(store, sinks, clock, metrics=metrics)
    assert report.dead == 1
    assert slack_keys(slack) == keys[1:]
    states = [r["state"] for r in rows(store)]
    assert states == ["dead", "delivered", "delivered"]
    assert "channel_not_found" in rows(store)[0]["last_error"]
    assert "DEAD LETTER" in caplog.text
    assert keys[0][:16] in caplog.text
    reason = {"sink": SLACK, "reason": "channel_not_found"}
    assert metrics.registry.get_sample_value("hubsentry_notify_failures_total", reason) == 1

    status = {s.sink: s for s in delivery_status(store, configured=list(sinks))}
    assert status[SLACK].dead == 1
    assert status[SLACK].pending == 0
    assert "channel_not_found" in status[SLACK].last_dead_error
    assert status[SLACK].configured is True

    assert requeue_dead(store, sink=SLACK, now=clock) == 1
    run(store, sinks, clock)
    assert sorted(slack_keys(slack)) == sorted(keys)
    assert [r["state"] for r in rows(store)] == ["delivered"] * 3


def test_unreadable_alert_row_is_dead_not_a_crash(store, sinks, slack, clock):
    bad, good = add_alerts(store, clock, 2)
    store.write(
        lambda db: db.execute("UPDATE alerts SET evidence_json = '{broken' WHERE alert_key = ?", [bad])
    )
    report = run(store, sinks, clock)
    assert report.dead == 2  # one per sink
    assert slack_keys(slack) == [good]
    assert "unreadable alert row" in rows(store)[0]["last_error"]


def test_missing_history_scope_falls_back_to_resending(store, slack, clock, caplog):
    slack.add_token("xoxb-post-only", scopes={"chat:write", "channels:read"})
    sinks = {SLACK: SlackSink("#model-ip", "xoxb-post-only", base_url=slack.base_url, timeout=2)}
    (key,) = add_alerts(store, clock, 1, sinks=(SLACK,))
    slack.fail(status=503)
    run(store, sinks, clock)
    clock.advance(60)
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.delivery"):
        run(store, sinks, clock)
    assert "cannot check whether alert" in caplog.text
    assert slack_keys(slack) == [key]


# ---------------------------------------------------------------------------------- outage and crashes


def test_hour_long_outage_loses_nothing_and_keeps_order(store, sinks, slack, clock):
    metrics = Metrics()
    metrics.watch_store(store)
    keys = add_alerts(store, clock, 3)
    outage_end = clock.epoch() + 3600
    slack.outage(until=outage_end)
    attempts_during_outage = 0
    while clock.epoch() < outage_end:
        run(store, sinks, clock, metrics=metrics)
        if int(clock.epoch()) % 900 == 0:
            keys += add_alerts(store, clock, 1)  # alerts keep coming during the outage
        clock.advance(30)
    attempts_during_outage = len(slack.requests())
    backlog = metrics.registry.get_sample_value("hubsentry_outbox_backlog", {"sink": SLACK})
    assert backlog == len(keys)
    assert metrics.registry.get_sample_value("hubsentry_outbox_backlog", {"sink": "log"}) == 0
    # Only the head row is retried, with exponential backoff: a handful of requests per hour, not hundreds.
    assert 5 <= attempts_during_outage <= 20
    status = {s.sink: s for s in delivery_status(store)}
    assert status[SLACK].pending == len(keys)
    assert status[SLACK].uncertain == 1  # the head: a 503 may have landed
    assert "503" in status[SLACK].last_error
    rounds = drain(store, sinks, clock)
    assert rounds <= 25  # within the 10-minute backoff cap after the outage ends
    assert slack_keys(slack) == keys
    assert len(slack.messages()) == len(set(keys))
    assert metrics.registry.get_sample_value("hubsentry_outbox_backlog", {"sink": SLACK}) == 0


def test_rate_limited_burst_of_200_alerts_all_arrive_once_in_order(store, sinks, slack, clock):
    keys = add_alerts(store, clock, 200, sinks=(SLACK,))
    slack.rate_limit(1.0, burst=3)
    drain(store, {SLACK: sinks[SLACK]}, clock, step_s=1.0)
    assert slack_keys(slack) == keys
    ratelimited = [r for r in slack.requests("chat.postMessage") if r.status == 429]
    assert ratelimited  # the emulation did push back
    assert all(r["state"] == "delivered" for r in rows(store))


def test_crash_after_post_before_commit_does_not_duplicate(store, sinks, slack, clock):
    """Simulated kill -9 between the post and the "delivered" commit: the row is left in 'sending'."""
    k1, k2 = add_alerts(store, clock, 2, sinks=(SLACK,))
    head = outbox.head_row(store, SLACK)
    outbox.mark_sending(store, head["id"], at=clock())
    sinks[SLACK].send(Alert.from_row(head))  # it reached Slack...
    # ...and the process died here. On restart:
    clock.advance(DEFAULT_POLICY.base_s + 1)
    report = run(store, {SLACK: sinks[SLACK]}, clock)
    assert report.recovered == 1
    assert report.delivered == 1
    assert slack_keys(slack) == [k1, k2]


def test_crash_before_post_sends_exactly_once(store, sinks, slack, clock):
    (k1,) = add_alerts(store, clock, 1, sinks=(SLACK,))
    head = outbox.head_row(store, SLACK)
    outbox.mark_sending(store, head["id"], at=clock())  # died before the request left
    clock.advance(DEFAULT_POLICY.base_s + 1)
    report = run(store, {SLACK: sinks[SLACK]}, clock)
    assert (report.recovered, report.delivered) == (0, 1)
    assert slack_keys(slack) == [k1]
    assert rows(store)[0]["attempts"] == 2


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from monitor.alerts.delivery import deliver_due
    from monitor.alerts.slack import SlackSink
    from monitor.store.db import Store
    db_path, base_url, token = sys.argv[1:4]
    with Store(db_path) as store:
        sink = SlackSink("#model-ip", token, base_url=base_url, timeout=30)
        deliver_due(store, {"slack:#model-ip": sink}, threading.Event())
    """
)


@pytest.mark.timeout(60)
def test_real_kill_9_mid_send_does_not_duplicate(tmp_path):
    """A real process is killed while Slack is still processing its post; the next run finds the message."""
    db_path = tmp_path / "hubsentry.db"
    wall = Clock()
    wall.t = datetime.now(UTC)
    with Store(db_path) as store:
        (key,) = add_alerts(store, wall, 1, sinks=(SLACK,))
    with LocalSlack(token=TOKEN, channels=["model-ip"]) as slack:
        slack.delay(seconds=1.5)  # Slack is slow: the post lands 1.5 s after the request
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db_path), slack.base_url, TOKEN],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        try:
            deadline = time.monotonic() + 30
            with Store(db_path) as store:
                while time.monotonic() < deadline and not (
                    rows(store) and rows(store)[0]["state"] == "sending"
                ):
                    time.sleep(0.02)
                assert rows(store)[0]["state"] == "sending"
                time.sleep(0.3)  # the request is on the wire, Slack is "processing"
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=10)
                assert child.returncode == -signal.SIGKILL
                while not slack.messages() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert slack_keys(slack) == [key]  # it did land after the kill
                assert rows(store)[0]["state"] == "sending"
                sink = SlackSink("#model-ip", TOKEN, base_url=slack.base_url, timeout=5)
                later = datetime.now(UTC) + timedelta(seconds=DEFAULT_POLICY.base_s + 1)
                report = deliver_due(store, {SLACK: sink}, threading.Event(), now=lambda: later)
                assert report.recovered == 1
                assert rows(store)[0]["state"] == "delivered"
                assert slack_keys(slack) == [key]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


# ------------------------------------------------------------------------------------ control and hygiene


def test_stop_event_and_single_consumer(store, sinks, slack, clock):
    add_alerts(store, clock, 3)
    stop = threading.Event()
    stop.set()
    assert not deliver_due(store, sinks, stop, now=clock).anything
    assert slack.messages() == []

    started, release = threading.Event(), threading.Event()

    class SlowSink:
        name = "slow"

        def send(self, alert):
            started.set()
            release.wait(5)
            return {"ok": True}

    add_alerts(store, clock, 1, sinks=("slow",))
    worker = threading.Thread(target=run, args=(store, {"slow": SlowSink()}, clock))
    worker.start()
    assert started.wait(5)
    try:
        assert run(store, sinks, clock).skipped
    finally:
        release.set()
        worker.join()
    assert not run(store, sinks, clock).skipped


def test_rows_for_unconfigured_sinks_wait_with_a_warning(store, sinks, slack, clock, caplog):
    add_alerts(store, clock, 1, sinks=("slack:#renamed-channel",))
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.delivery"):
        run(store, sinks, clock)
        run(store, sinks, clock)
    assert caplog.text.count("'slack:#renamed-channel', which is not configured") == 1
    assert rows(store, "slack:#renamed-channel")[0]["state"] == "pending"
    (status,) = [
        s for s in delivery_status(store, configured=list(sinks)) if s.sink == "slack:#renamed-channel"
    ]
    assert status.configured is False
    assert status.pending == 1


def test_a_sink_bug_keeps_the_row_and_makes_noise(store, clock, caplog):
    class BrokenSink:
        name = "broken"

        def send(self, alert):
            raise KeyError("bug")

    add_alerts(store, clock, 1, sinks=("broken",))
    with caplog.at_level(logging.ERROR, logger="monitor.alerts.delivery"):
        report = run(store, {"broken": BrokenSink()}, clock)
    assert report.retried == 1
    assert "sink raised an unexpected error" in caplog.text
    (row,) = rows(store, "broken")
    assert row["state"] == "pending"
    assert "unexpected KeyError" in row["last_error"]


def test_a_lookup_bug_blocks_the_row_instead_of_crashing(store, clock, caplog):
    class BrokenLookup:
        name = "odd"

        def send(self, alert):
            return {"ok": True}

        def find_delivered(self, alert, *, since):
            raise ZeroDivisionError("bug")

    add_alerts(store, clock, 1, sinks=("odd",))
    head = outbox.head_row(store, "odd")
    outbox.mark_sending(store, head["id"], at=clock())
    clock.advance(DEFAULT_POLICY.base_s + 1)
    with caplog.at_level(logging.ERROR, logger="monitor.alerts.delivery"):
        report = run(store, {"odd": BrokenLookup()}, clock)
    assert report.retried == 1
    assert "lookup raised an unexpected error" in caplog.text
    (row,) = rows(store, "odd")
    assert row["state"] == "pending"
    assert row["sending_since"] is not None  # still uncertain: it will be looked up again
    assert row["attempts"] == 2


def test_token_never_reaches_logs_receipts_or_the_database(tmp_path, store, sinks, slack, clock, caplog):
    caplog.set_level(logging.DEBUG)
    add_alerts(store, clock, 4)
    slack.fail(status=429, retry_after=1)
    run(store, sinks, clock)
    slack.fail(status=500)
    clock.advance(10)
    run(store, sinks, clock)
    slack.reset(after_effect=True)
    clock.advance(600)
    drain(store, sinks, clock)
    slack.fail(error="invalid_auth")
    add_alerts(store, clock, 1)
    run(store, sinks, clock)
    assert TOKEN not in caplog.text
    with store.read() as db:
        dump = "\n".join(db.iterdump())
    assert "invalid_auth" in dump  # the dump does hold the delivery history...
    assert TOKEN not in dump  # ...but never the token
    for path in tmp_path.iterdir():
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------- policy and tools


def test_retry_delay_backs_off_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(base_s=10, max_s=600, jitter=0.25)
    rng = random.Random(0)
    for attempts, nominal in [(1, 10), (2, 20), (3, 40), (6, 320), (7, 600), (50, 600)]:
        for _ in range(50):
            delay = retry_delay(attempts, policy=policy, rng=rng)
            assert nominal * 0.75 <= delay <= nominal
    for _ in range(50):
        assert 30 <= retry_delay(1, retry_after_s=30, policy=policy, rng=rng) <= 33
    assert retry_delay(1, retry_after_s=0, policy=policy, rng=rng) >= 1


def test_notify_test_sends_a_labelled_message(slack):
    sink = SlackSink("#model-ip", TOKEN, base_url=slack.base_url)
    result = notify_test(sink)
    assert result["check"]["channel"] == slack.channel_id("model-ip")
    assert result["receipt"]["ts"] == slack.messages()[0].ts
    message = slack.messages()[0]
    assert "TEST MESSAGE" in message.text
    assert "<@" not in message.text  # low severity: nobody gets paged by a test
    assert message.alert_key.startswith("test-")
    bad = SlackSink("#model-ip", "xoxb-bad", base_url=slack.base_url)
    with pytest.raises(PermanentNotifyError, match="invalid_auth"):
        notify_test(bad)


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_random_fault_storm_delivers_everything_once_in_order(store, sinks, slack, clock, seed):
    """Hundreds of rounds of random 429s, 5xx, resets (before and after the post lands), outages and a
    rate limit, with alerts arriving throughout: every alert reaches Slack exactly once, in seq order."""
    rng = random.Random(seed)
    slack.rate_limit(1.0, burst=2)
    keys: list[str] = []
    for _ in range(300):
        if rng.random() < 0.3:
            keys += add_alerts(store, clock, rng.randint(1, 2))
        roll = rng.random()
        method = rng.choice(["chat.postMessage", "conversations.history", "conversations.list", None])
        if roll < 0.08:
            slack.fail(method, status=429, retry_after=rng.randint(1, 90))
        elif roll < 0.16:
            slack.fail(method, status=rng.choice([500, 502, 503]))
        elif roll < 0.22:
            slack.reset(method, after_effect=rng.random() < 0.5)
        elif roll < 0.24:
            slack.outage(until=clock.epoch() + rng.randint(60, 1800), mode=rng.choice(["503", "reset"]))
        elif roll < 0.28:
            slack.fail(method, error="internal_error")
        run(store, sinks, clock)
        clock.advance(rng.randint(1, 60))
    slack.clear_faults()
    drain(store, sinks, clock, step_s=60)
    assert slack_keys(slack) == keys
    assert [r["state"] for r in rows(store, "log")] == ["delivered"] * len(keys)
