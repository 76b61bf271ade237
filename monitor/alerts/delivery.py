"""The outbox consumer: deliver every alert to every sink, in order, exactly once where the sink allows it.

The worker writes an ``alerts`` row and one ``outbox`` row per configured sink in the same transaction as the
scan result, so an alert that exists is an alert that will be delivered. `deliver_due` drains that outbox:

* **Order.** Per sink, rows go out in alert ``seq`` order. A head-of-line row that is waiting for a retry
  blocks the rows behind it *for that sink only* (the log sink keeps flowing while Slack is down), so a
  channel never shows alert 8 before alert 7.
* **Crash safety.** A row is marked ``sending`` (with ``sending_since``) and committed *before* the sink is
  called, and ``delivered`` with the receipt after. A row found with ``sending_since`` set — left ``sending``
  by a kill -9, or put back to ``pending`` after a timeout or reset — may or may not have arrived; before
  sending it again a `RecoverableSink` (Slack) is asked to find it (``conversations.history`` since
  ``sending_since``, matched on the alert key in message metadata). Found: it is marked delivered with that
  receipt. Not found: it is sent. So neither a crash nor a lost response duplicates a Slack alert.
* **Retries.** Retryable failures (5xx, network) back off exponentially with jitter up to a cap, the
  exponent being the *sink's* consecutive failures since its last success (``sink_health``, see
  `monitor.alerts.outbox`), so one outage's backoff never carries over to the next, nor does a crash or a
  run of rate-limit answers push a head row to the maximum wait. A rate limit (429 with ``Retry-After``)
  is obeyed exactly and is not counted as a failure. Retries go on forever, because an alert must survive
  an outage of any length (the backlog is visible in ``hubsentry status`` and
  ``hubsentry_outbox_backlog``). Only the head row is retried, so an outage costs one request per sink per
  backoff period.
* **Timing.** `DeliveryReport.next_attempt_at` says when the earliest blocked head row may be tried again;
  the daemon runs the delivery job again at that moment (`monitor.scheduler.deliver_job`), so a
  ``Retry-After: 1`` costs one second, not a scheduler interval.
* **Dead letters.** Permanent failures (revoked token, unknown channel, rejected payload) mark the row
  ``dead`` with the reason and log an ERROR; delivery continues with the next row. `requeue_dead` puts
  dead rows back once the operator has fixed the cause.

The function never sleeps for a rate limit and checks ``stop`` between rows, so it can run as a scheduler
job without holding up shutdown for more than one sink call.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from monitor.alerts import outbox
from monitor.alerts.model import Alert, AlertDataError
from monitor.alerts.outbox import SinkStatus, delivery_status
from monitor.alerts.sinks import DeliveryUncertainError, RecoverableSink, Sink, failure_reason, with_reason
from monitor.errors import NotifyError, PermanentNotifyError, RetryableNotifyError
from monitor.findings import Finding, ScanOutcome
from monitor.metrics import Metrics
from monitor.store.db import Store, from_iso, to_iso, utc_now

__all__ = [
    "DEFAULT_POLICY",
    "DeliveryReport",
    "RetryPolicy",
    "SinkStatus",
    "deliver_due",
    "delivery_status",
    "notify_test",
    "requeue_dead",
    "retry_delay",
]

logger = logging.getLogger(__name__)

_CONSUMER_LOCK = threading.Lock()
"""One consumer per process: a second concurrent `deliver_due` would race on the head rows."""
_WARNED_ORPHANS: set[str] = set()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff of retryable delivery failures.

    Attributes:
        base_s (`float`): delay after the first failure.
        max_s (`float`): cap of the exponential delay. Only the head row of a sink is retried, so a short
            cap is cheap (one request per sink per period) and gets alerts out soon after an outage ends.
        jitter (`float`): the delay is drawn uniformly from ``[(1 - jitter) · d, d]``, so many processes
            (or sinks) recovering from the same outage do not retry in lockstep.
        max_per_run (`int`): rows delivered per sink per `deliver_due` call, so one huge backlog cannot
            starve the other sinks or delay shutdown.
    """

    base_s: float = 15.0
    max_s: float = 600.0
    jitter: float = 0.25
    max_per_run: int = 200


DEFAULT_POLICY = RetryPolicy()


@dataclass
class DeliveryReport:
    """What one `deliver_due` call did (also logged at INFO when anything happened).

    A plain (non-slots) dataclass, so ``vars(report)`` works as well as `as_json`.
    """

    delivered: int = 0
    recovered: int = 0
    retried: int = 0
    dead: int = 0
    blocked: dict[str, str] = field(default_factory=dict)
    """Sinks whose head row could not go out in this call, with the reason."""
    skipped: bool = False
    next_attempt_at: str | None = None
    """Earliest time (store ISO text) a configured sink has a row to try again: a blocked head row's due
    time, or now when a sink stopped at ``max_per_run``. None: nothing is waiting (or the call was stopped
    or skipped)."""

    @property
    def anything(self) -> bool:
        return bool(self.delivered or self.recovered or self.retried or self.dead)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def retry_delay(
    attempts: int,
    *,
    retry_after_s: float | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempts``-th consecutive failure of a sink.

    ``Retry-After`` wins when the sink gave one (never earlier than asked; up to 10 % later to spread
    clients); otherwise ``base_s · 2^(attempts-1)`` capped at ``max_s``, with jitter. `deliver_due` passes
    the sink's failure streak (`monitor.alerts.outbox.sink_failures`) plus this failure.
    """
    draw = (rng or random).random()
    if retry_after_s is not None:
        return max(1.0, retry_after_s) * (1.0 + 0.1 * draw)
    exponent = min(max(attempts - 1, 0), 30)
    delay = min(policy.max_s, policy.base_s * (2.0**exponent))
    return delay * (1.0 - policy.jitter * draw)


def deliver_due(
    store: Store,
    sinks: Mapping[str, Sink],
    stop: threading.Event,
    *,
    now: Callable[[], datetime] = utc_now,
    policy: RetryPolicy = DEFAULT_POLICY,
    metrics: Metrics | None = None,
    rng: random.Random | None = None,
) -> DeliveryReport:
    """Deliver every due outbox row, per sink in alert ``seq`` order (see the module docstring).

    Args:
        store (`Store`): the HubSentry store (single writer; every state change is committed before the
            next sink call).
        sinks (`Mapping[str, Sink]`): outbox sink name → sink. Rows of sinks not in the mapping stay
            pending (a warning is logged once) until a config that has the sink runs again.
        stop (`threading.Event`): checked between rows; set it to stop after the current sink call.
        now (`Callable[[], datetime]`): the clock (aware UTC); tests inject one to simulate an outage.
        policy (`RetryPolicy`): backoff and per-run bounds.
        metrics (`Metrics | None`): counts deliveries and failures.
        rng (`random.Random | None`): jitter source (tests pass a seeded one).

    Returns:
        `DeliveryReport`; ``skipped`` when another call in this process was already running.
    """
    report = DeliveryReport()
    if not _CONSUMER_LOCK.acquire(blocking=False):
        report.skipped = True
        return report
    try:
        _warn_orphans(store, sinks)
        for name, sink in sinks.items():
            if stop.is_set():
                break
            _deliver_sink(
                store, name, sink, stop, now=now, policy=policy, metrics=metrics, rng=rng, report=report
            )
    finally:
        _CONSUMER_LOCK.release()
    if report.anything:
        logger.info(
            "outbox: %d delivered, %d recovered after an interrupted send, %d to retry, %d dead",
            report.delivered,
            report.recovered,
            report.retried,
            report.dead,
        )
    return report


def _deliver_sink(
    store: Store,
    name: str,
    sink: Sink,
    stop: threading.Event,
    *,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    metrics: Metrics | None,
    rng: random.Random | None,
    report: DeliveryReport,
) -> None:
    failures = outbox.sink_failures(store, name)
    for _ in range(policy.max_per_run):
        if stop.is_set():
            return
        row = outbox.head_row(store, name)
        if row is None:
            return
        due = _due(row, policy)
        if due > to_iso(now()):
            report.blocked[name] = f"next attempt at {due}"
            _note_due(report, due)
            return
        try:
            alert = Alert.from_row(row)
        except AlertDataError as exc:
            outbox.mark_dead(store, row["id"], f"unreadable alert row: {exc}", at=now())
            _loud_dead(name, row, str(exc))
            report.dead += 1
            continue
        if row["sending_since"] is not None:
            found = _recover(
                store,
                name,
                sink,
                row,
                alert,
                failures=failures,
                now=now,
                policy=policy,
                metrics=metrics,
                rng=rng,
                report=report,
            )
            if found == "blocked":
                _note_head_due(store, name, report, policy)
                return
            if found == "recovered":
                failures = 0
                continue
        delivered_before = report.delivered
        if not _attempt(
            store,
            name,
            sink,
            row,
            alert,
            failures=failures,
            now=now,
            policy=policy,
            metrics=metrics,
            rng=rng,
            report=report,
        ):
            _note_head_due(store, name, report, policy)
            return
        if report.delivered > delivered_before:  # (a dead letter leaves the streak as it was)
            failures = 0
    else:
        _note_due(report, to_iso(now()))  # max_per_run reached: more rows are due now


def _note_due(report: DeliveryReport, due: str) -> None:
    if report.next_attempt_at is None or due < report.next_attempt_at:
        report.next_attempt_at = due


def _note_head_due(store: Store, name: str, report: DeliveryReport, policy: RetryPolicy) -> None:
    """After a failure: when the (re-read) head row of ``name`` may be tried again."""
    row = outbox.head_row(store, name)
    if row is not None:
        _note_due(report, _due(row, policy))


def _due(row: Mapping[str, Any], policy: RetryPolicy) -> str:
    """When the head row may be tried. A row left ``sending`` by a crash waits ``policy.base_s`` after its
    attempt started, as an uncertain failure does: the receiver may still be processing that request (the
    process died, the request did not), and a lookup before it lands would send the alert twice."""
    due = str(row["next_attempt_at"])
    if row["outbox_state"] == "sending" and row["sending_since"] is not None:
        since = from_iso(row["sending_since"])
        assert since is not None
        due = max(due, to_iso(since + timedelta(seconds=policy.base_s)))
    return due


def _recover(
    store: Store,
    name: str,
    sink: Sink,
    row: Mapping[str, Any],
    alert: Alert,
    *,
    failures: int,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    metrics: Metrics | None,
    rng: random.Random | None,
    report: DeliveryReport,
) -> Literal["recovered", "send", "blocked"]:
    """Handle a row whose previous attempt may have arrived: was it delivered, must it be sent, or can the
    receiver not be asked right now (sink blocked until the retry)?"""
    if not isinstance(sink, RecoverableSink):
        logger.warning(
            "%s: the last attempt for alert %s may have arrived; %s cannot check, so it is sent again "
            "(the receiver may see it twice)",
            name,
            alert.alert_key[:16],
            name,
        )
        return "send"
    since = from_iso(row["sending_since"])
    assert since is not None
    try:
        receipt = sink.find_delivered(alert, since=since)
    except PermanentNotifyError as exc:
        logger.warning(
            "%s: cannot check whether alert %s already arrived (%s); sending it again, it may appear twice",
            name,
            alert.alert_key[:16],
            exc,
        )
        return "send"
    except Exception as exc:  # RetryableNotifyError, or a sink bug: ask again later, never crash the job
        if not isinstance(exc, RetryableNotifyError):
            logger.exception("%s: lookup raised an unexpected error for alert %s", name, alert.alert_key[:16])
            exc = with_reason(
                DeliveryUncertainError(f"{name}: unexpected {type(exc).__name__}: {exc}"), "unexpected"
            )
        moment = now()
        due = moment + timedelta(
            seconds=retry_delay(failures + 1, retry_after_s=exc.retry_after_s, policy=policy, rng=rng)
        )
        outbox.mark_lookup_failed(store, row["id"], f"lookup failed: {exc}", due=due, at=moment)
        _count_failure(metrics, name, exc)
        report.retried += 1
        report.blocked[name] = f"lookup failed: {exc}"
        return "blocked"
    if receipt is None:
        return "send"
    outbox.mark_delivered(store, row["id"], receipt, at=now())
    report.recovered += 1
    if metrics is not None:
        metrics.record_delivery(name, severity=alert.severity)
    logger.info(
        "%s: alert %s had already arrived before the interruption (%s)", name, alert.alert_key[:16], receipt
    )
    return "recovered"


def _attempt(
    store: Store,
    name: str,
    sink: Sink,
    row: Mapping[str, Any],
    alert: Alert,
    *,
    failures: int,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    metrics: Metrics | None,
    rng: random.Random | None,
    report: DeliveryReport,
) -> bool:
    """Send one row. Returns False when the sink is blocked (retry scheduled), True to continue."""
    outbox.mark_sending(store, row["id"], at=now())
    try:
        receipt = sink.send(alert)
    except DeliveryUncertainError as exc:
        _schedule_retry(store, row, exc, uncertain=True, failures=failures, now=now, policy=policy, rng=rng)
        _count_failure(metrics, name, exc)
        report.retried += 1
        report.blocked[name] = str(exc)
        logger.warning(
            "%s: alert %s may not have arrived (%s); will check and retry", name, alert.alert_key[:16], exc
        )
        return False
    except RetryableNotifyError as exc:
        _schedule_retry(store, row, exc, uncertain=False, failures=failures, now=now, policy=policy, rng=rng)
        _count_failure(metrics, name, exc)
        report.retried += 1
        report.blocked[name] = str(exc)
        logger.warning("%s: alert %s not delivered (%s); will retry", name, alert.alert_key[:16], exc)
        return False
    except PermanentNotifyError as exc:
        outbox.mark_dead(store, row["id"], str(exc), at=now())
        _count_failure(metrics, name, exc)
        _loud_dead(name, row, str(exc))
        report.dead += 1
        return True
    except Exception as exc:  # a sink bug: keep the row (it may have been sent) and make noise
        logger.exception("%s: sink raised an unexpected error for alert %s", name, alert.alert_key[:16])
        wrapped = with_reason(
            DeliveryUncertainError(f"{name}: unexpected {type(exc).__name__}: {exc}"), "unexpected"
        )
        _schedule_retry(
            store, row, wrapped, uncertain=True, failures=failures, now=now, policy=policy, rng=rng
        )
        _count_failure(metrics, name, wrapped)
        report.retried += 1
        report.blocked[name] = str(wrapped)
        return False
    outbox.mark_delivered(store, row["id"], receipt, at=now())
    report.delivered += 1
    if metrics is not None:
        metrics.record_delivery(name, severity=alert.severity)
    return True


def _schedule_retry(
    store: Store,
    row: Mapping[str, Any],
    exc: NotifyError,
    *,
    uncertain: bool,
    failures: int,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    rng: random.Random | None,
) -> None:
    """Schedule the head row's retry: ``Retry-After`` when given (not counted as a sink failure), else the
    backoff of the sink's ``failures + 1``-th consecutive failure."""
    retry_after = exc.retry_after_s if isinstance(exc, RetryableNotifyError) else None
    moment = now()
    delay = retry_delay(failures + 1, retry_after_s=retry_after, policy=policy, rng=rng)
    outbox.mark_retry(
        store,
        row["id"],
        str(exc),
        due=moment + timedelta(seconds=delay),
        uncertain=uncertain,
        at=moment,
        counts_as_failure=retry_after is None,
    )


def _count_failure(metrics: Metrics | None, sink: str, exc: BaseException) -> None:
    if metrics is not None:
        metrics.record_notify_failure(sink, reason=failure_reason(exc))


def _loud_dead(sink: str, row: Mapping[str, Any], reason: str) -> None:
    logger.error(
        "DEAD LETTER: alert %s (seq %s, %s ↔ %s) will NOT be delivered to %s: %s. "
        "Fix the cause, then requeue it (monitor.alerts.delivery.requeue_dead); see `hubsentry status`.",
        row["alert_key"][:16],
        row["seq"],
        row.get("protected"),
        row.get("repo_id"),
        sink,
        reason,
        extra={"sink": sink, "alert_key": row["alert_key"]},
    )


def _warn_orphans(store: Store, sinks: Mapping[str, Sink]) -> None:
    with store.read() as db:
        names = [
            r["sink"]
            for r in db.query("SELECT DISTINCT sink FROM outbox WHERE state IN ('pending', 'sending')")
        ]
    for name in names:
        if name not in sinks and name not in _WARNED_ORPHANS:
            _WARNED_ORPHANS.add(name)
            logger.warning(
                "outbox has undelivered alerts for sink %r, which is not configured; they wait until it is "
                "(or were meant for a channel that was renamed in the config)",
                name,
            )


# --------------------------------------------------------------------------------------- status and admin


def requeue_dead(
    store: Store,
    *,
    sink: str | None = None,
    alert_key: str | None = None,
    now: Callable[[], datetime] = utc_now,
) -> int:
    """Put dead letters back in the queue (all, one sink's, or one alert's); returns how many.

    For ``hubsentry`` admin commands once the cause (token, channel) is fixed; see `outbox.requeue_dead`.
    """
    return outbox.requeue_dead(store, at=now(), sink=sink, alert_key=alert_key)


def notify_test(sink: Sink, *, now: Callable[[], datetime] = utc_now) -> dict[str, Any]:
    """Send one clearly-labelled test alert straight through ``sink`` (not the outbox) for
    ``hubsentry notify test``; returns ``{"sink", "check", "receipt"}``.

    A sink that can verify its setup first (Slack: ``auth.test`` and channel lookup, through its ``check``
    method) does so, so a bad token or channel is reported as such rather than as a failed post.

    Raises:
        `NotifyError`: the check or the send failed (message says why and what to change).
    """
    check = getattr(sink, "check", None)
    checked = check() if callable(check) else None
    moment = now()
    outcome = ScanOutcome(
        hub="hubsentry",
        repo_id="hubsentry/notify-test",
        commit="0" * 40,
        url="",
        weight_files=("none",),
        weight_format=None,
        reproduce="hubsentry notify test",
        notes=("This is a test message from `hubsentry notify test`; no model was compared.",),
    )
    finding = Finding(
        protected="hubsentry-notify-test",
        owner=None,
        verdict="inconclusive",
        p_value=1.0,
        log10_p=0.0,
        null="none: this is a delivery test, not a finding",
        transform="TEST MESSAGE",
        matched="nothing: delivery test",
        severity="low",
    )
    alert = Alert.from_scan(outcome, finding, seq=0, created_at=moment)
    alert = dataclasses.replace(alert, alert_key=f"test-{uuid.uuid4().hex}")
    receipt = sink.send(alert)
    return {"sink": sink.name, "check": checked, "receipt": receipt}
