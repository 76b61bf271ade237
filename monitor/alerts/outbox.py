"""SQL over the ``outbox`` table: the head row of a sink, guarded state transitions, status and requeue.

Rows move ``pending → sending → delivered``, or to ``dead``; a retry puts a row back to ``pending`` with a
later ``next_attempt_at``. ``sending_since`` on a ``pending`` or ``sending`` row means "the last attempt may
have arrived": the consumer (`monitor.alerts.delivery`) looks such a row up before sending it again.
Every transition is one statement in its own write transaction (through the store's single writer) and is
guarded by ``state IN ('pending', 'sending')``, so a row an operator already finished is never touched.

``sink_health`` keeps, per sink, the consecutive failures since its last success: a failed attempt or lookup
adds one (in the transaction that records it), a delivery or a recovered receipt resets it. The consumer bases
its backoff on it rather than on the head row's own attempt count, which also counts attempts cut short by
a crash and rate-limit answers, and would keep a long-lived head row at the maximum backoff after the sink
has long recovered.
Times are the store's fixed-width UTC text (`monitor.store.db.to_iso`), so SQL string order is time order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from monitor.store.db import Store, to_iso

__all__ = [
    "MAX_ERROR_CHARS",
    "SinkStatus",
    "delivery_status",
    "head_row",
    "mark_dead",
    "mark_delivered",
    "mark_lookup_failed",
    "mark_retry",
    "mark_sending",
    "requeue_dead",
    "sink_failures",
    "undelivered_sinks",
]

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1000

_HEAD_SQL = """
SELECT o.id, o.sink, o.state AS outbox_state, o.attempts, o.next_attempt_at, o.last_error,
       o.sending_since, o.created_at AS queued_at,
       a.alert_key, a.seq, a.protected, a.owner, a.hub, a.repo_id, a.commit_sha, a.verdict, a.severity,
       a.p_value, a.log10_p, a.transform, a.evidence_json, a.state, a.created_at
FROM outbox AS o JOIN alerts AS a ON a.alert_key = o.alert_key
WHERE o.sink = ? AND o.state IN ('pending', 'sending')
ORDER BY a.seq, o.id
LIMIT 1
"""

_TRANSITIONS = {
    "sending": """
        UPDATE outbox SET state = 'sending', sending_since = ?, attempts = attempts + 1
        WHERE id = ? AND state IN ('pending', 'sending')""",
    "delivered": """
        UPDATE outbox SET state = 'delivered', delivered_at = ?, receipt_json = ?, last_error = NULL
        WHERE id = ? AND state IN ('pending', 'sending')""",
    "dead": """
        UPDATE outbox SET state = 'dead', sending_since = NULL, last_error = ?, next_attempt_at = ?
        WHERE id = ? AND state IN ('pending', 'sending')""",
    "retry": """
        UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ?, sending_since = NULL
        WHERE id = ? AND state IN ('pending', 'sending')""",
    "retry_uncertain": """
        UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ?
        WHERE id = ? AND state IN ('pending', 'sending')""",
    "lookup_failed": """
        UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ?, attempts = attempts + 1
        WHERE id = ? AND state IN ('pending', 'sending')""",
}


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """Outbox state of one sink, for ``hubsentry status``.

    Attributes:
        sink (`str`): outbox sink name.
        configured (`bool | None`): whether the running config has this sink (None: not known here).
        pending (`int`): rows waiting (including ``uncertain`` ones).
        uncertain (`int`): rows whose last attempt may have arrived (looked up before resending).
        delivered (`int`), dead (`int`): finished rows.
        oldest_pending_at (`str | None`): creation time of the oldest waiting row.
        next_attempt_at (`str | None`): when the head row is tried next.
        head_attempts (`int`): attempts so far of the head row.
        last_error (`str | None`): the head row's last error (why the sink is stuck).
        last_dead_error (`str | None`): the most recent dead letter's reason.
        last_delivered_at (`str | None`): when the last delivery succeeded.
        consecutive_failures (`int`): failed attempts and lookups since the sink's last success (what its
            retry backoff grows with).
    """

    sink: str
    configured: bool | None
    pending: int
    uncertain: int
    delivered: int
    dead: int
    oldest_pending_at: str | None
    next_attempt_at: str | None
    head_attempts: int
    last_error: str | None
    last_dead_error: str | None
    last_delivered_at: str | None
    consecutive_failures: int = 0

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def head_row(store: Store, sink: str) -> dict[str, Any] | None:
    """The next undelivered row of ``sink`` in alert ``seq`` order, joined with its alert, or None."""
    with store.read() as db:
        rows = list(db.query(_HEAD_SQL, [sink]))
    return rows[0] if rows else None


def undelivered_sinks(store: Store) -> list[str]:
    """Sink names that have pending or sending rows."""
    with store.read() as db:
        return [
            r["sink"]
            for r in db.query("SELECT DISTINCT sink FROM outbox WHERE state IN ('pending', 'sending')")
        ]


_SINK_FAILED = """
INSERT INTO sink_health (sink, failures, last_failure_at, last_error, updated_at)
SELECT sink, 1, ?, ?, ? FROM outbox WHERE id = ?
ON CONFLICT (sink) DO UPDATE SET failures = failures + 1, last_failure_at = excluded.last_failure_at,
    last_error = excluded.last_error, updated_at = excluded.updated_at
"""
_SINK_SUCCEEDED = """
INSERT INTO sink_health (sink, failures, last_success_at, updated_at)
SELECT sink, 0, ?, ? FROM outbox WHERE id = ?
ON CONFLICT (sink) DO UPDATE SET failures = 0, last_success_at = excluded.last_success_at,
    updated_at = excluded.updated_at
"""


def _transition(
    store: Store,
    row_id: int,
    transition: str,
    params: list[Any],
    *,
    health: tuple[str, list[Any]] | None = None,
) -> None:
    """One guarded transition and, when it applied, its effect on the sink's health, in one transaction."""
    statement = _TRANSITIONS[transition]

    def fn(db: Database) -> None:
        cursor = db.execute(statement, [*params, row_id])
        if health is not None and cursor.rowcount == 1:
            db.execute(health[0], [*health[1], row_id])

    store.write(fn)


def _failed(error: str, at: datetime) -> tuple[str, list[Any]]:
    stamp = to_iso(at)
    return _SINK_FAILED, [stamp, error[:MAX_ERROR_CHARS], stamp]


def mark_sending(store: Store, row_id: int, *, at: datetime) -> None:
    """Committed before the sink is called: from here on, the attempt may have arrived."""
    _transition(store, row_id, "sending", [to_iso(at)])


def mark_delivered(store: Store, row_id: int, receipt: Mapping[str, Any], *, at: datetime) -> None:
    """Delivered (or found delivered after an interruption): the sink's failure streak ends."""
    receipt_json = json.dumps(dict(receipt), default=str, sort_keys=True)
    stamp = to_iso(at)
    _transition(store, row_id, "delivered", [stamp, receipt_json], health=(_SINK_SUCCEEDED, [stamp, stamp]))


def mark_dead(store: Store, row_id: int, reason: str, *, at: datetime) -> None:
    _transition(store, row_id, "dead", [reason[:MAX_ERROR_CHARS], to_iso(at)])


def mark_retry(
    store: Store,
    row_id: int,
    error: str,
    *,
    due: datetime,
    uncertain: bool,
    at: datetime,
    counts_as_failure: bool = True,
) -> None:
    """Back to ``pending`` until ``due``; ``sending_since`` is kept only when the attempt may have landed.

    Args:
        at (`datetime`): when the attempt failed.
        counts_as_failure (`bool`): add one to the sink's failure streak. False for a rate-limit answer
            that said when to come back: that is flow control, obeyed exactly, not a sign of an outage.
    """
    transition = "retry_uncertain" if uncertain else "retry"
    health = _failed(error, at) if counts_as_failure else None
    _transition(store, row_id, transition, [to_iso(due), error[:MAX_ERROR_CHARS]], health=health)


def mark_lookup_failed(store: Store, row_id: int, error: str, *, due: datetime, at: datetime) -> None:
    """The receiver could not be asked whether the last attempt arrived: keep ``sending_since``, count the
    failed lookup as an attempt and as a failure of the sink (so backoff grows during an outage) and try
    again at ``due``."""
    _transition(
        store, row_id, "lookup_failed", [to_iso(due), error[:MAX_ERROR_CHARS]], health=_failed(error, at)
    )


def sink_failures(store: Store, sink: str) -> int:
    """Consecutive failed attempts and lookups of ``sink`` since its last success (0: healthy or unknown)."""
    with store.read() as db:
        row = db.execute("SELECT failures FROM sink_health WHERE sink = ?", [sink]).fetchone()
    return int(row[0]) if row else 0


def delivery_status(store: Store, *, configured: Iterable[str] | None = None) -> list[SinkStatus]:
    """Per-sink outbox summary for ``hubsentry status``: backlog, head row, last errors, dead letters.

    Args:
        store (`Store`): the store (one read connection).
        configured (`Iterable[str] | None`): sink names of the running config, to flag orphaned rows and
            to list configured sinks that have no rows yet.
    """
    names = None if configured is None else set(configured)
    with store.read() as db:
        result = [_sink_status(db, row, names) for row in db.query(_COUNTS_SQL)]
    known = {s.sink for s in result}
    for name in sorted(names or ()):
        if name not in known:
            result.append(SinkStatus(name, True, 0, 0, 0, 0, None, None, 0, None, None, None))
    return result


_COUNTS_SQL = """
SELECT sink,
       sum(state IN ('pending', 'sending')) AS pending,
       sum(state IN ('pending', 'sending') AND sending_since IS NOT NULL) AS uncertain,
       sum(state = 'delivered') AS delivered,
       sum(state = 'dead') AS dead,
       min(CASE WHEN state IN ('pending', 'sending') THEN created_at END) AS oldest_pending_at,
       max(delivered_at) AS last_delivered_at
FROM outbox GROUP BY sink ORDER BY sink
"""


def _sink_status(db: Database, counts: Mapping[str, Any], names: set[str] | None) -> SinkStatus:
    sink = counts["sink"]
    head = list(
        db.query(
            """
            SELECT o.next_attempt_at, o.attempts, o.last_error FROM outbox AS o
            JOIN alerts AS a ON a.alert_key = o.alert_key
            WHERE o.sink = ? AND o.state IN ('pending', 'sending') ORDER BY a.seq, o.id LIMIT 1
            """,
            [sink],
        )
    )
    dead = list(
        db.query(
            "SELECT last_error FROM outbox WHERE sink = ? AND state = 'dead' ORDER BY id DESC LIMIT 1", [sink]
        )
    )
    health = db.execute("SELECT failures FROM sink_health WHERE sink = ?", [sink]).fetchone()
    return SinkStatus(
        sink=sink,
        configured=None if names is None else sink in names,
        pending=int(counts["pending"] or 0),
        uncertain=int(counts["uncertain"] or 0),
        delivered=int(counts["delivered"] or 0),
        dead=int(counts["dead"] or 0),
        oldest_pending_at=counts["oldest_pending_at"],
        next_attempt_at=head[0]["next_attempt_at"] if head else None,
        head_attempts=int(head[0]["attempts"]) if head else 0,
        last_error=head[0]["last_error"] if head else None,
        last_dead_error=dead[0]["last_error"] if dead else None,
        last_delivered_at=counts["last_delivered_at"],
        consecutive_failures=int(health[0]) if health else 0,
    )


def requeue_dead(store: Store, *, at: datetime, sink: str | None = None, alert_key: str | None = None) -> int:
    """Put dead letters back in the queue after the operator fixed the cause; returns how many.

    A requeued row goes out in ``seq`` order with the rows still waiting for its sink, so a channel may show
    it after newer alerts that were delivered meanwhile. The old error stays readable in ``last_error``.
    """
    stamp = to_iso(at)

    def fn(db: Database) -> int:
        cursor = db.execute(
            """
            UPDATE outbox
            SET state = 'pending', attempts = 0, next_attempt_at = ?, sending_since = NULL,
                last_error = 'requeued at ' || ? || ' after: ' || coalesce(last_error, '')
            WHERE state = 'dead' AND (? IS NULL OR sink = ?) AND (? IS NULL OR alert_key = ?)
            """,
            [stamp, stamp, sink, sink, alert_key, alert_key],
        )
        return int(cursor.rowcount)

    count = store.write(fn)
    if count:
        logger.info(
            "requeued %d dead outbox rows (sink=%s, alert=%s)", count, sink or "any", alert_key or "any"
        )
    return count
