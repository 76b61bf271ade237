"""One read of what an operator checks first: cursors, queue, dead letters, alerts.

Used by ``hubsentry status`` (table or ``--json``), which adds the outbox summary from
`monitor.alerts.outbox.delivery_status`; read-only, so it is safe while the daemon runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from monitor.store.alerts import alert_counts
from monitor.store.cursors import list_cursors
from monitor.store.db import to_iso, utc_now
from monitor.store.queue import list_items, next_due_at, queue_counts

__all__ = ["collect_status", "comparisons_since"]


def comparisons_since(db: Database, since: datetime) -> int:
    """Statistical comparisons (suspect × protected model) recorded since ``since``.

    The daemon's per-comparison level is ``family_alpha_per_day / max_comparisons_per_day``; the daily
    family-wise guarantee holds only while this count stays below ``max_comparisons_per_day``.
    """
    row = db.execute(
        "SELECT COUNT(*) FROM scan_results WHERE created_at >= ? AND transform != 'exact copy'",
        [to_iso(since)],
    ).fetchone()
    return int(row[0])


def collect_status(db: Database, *, dead_limit: int = 20, now: datetime | None = None) -> dict[str, Any]:
    """JSON-ready snapshot: ``cursors``, ``queue`` (counts, next due), ``dead`` (latest dead items),
    ``alerts`` (counts per state) and ``comparisons_24h``."""
    due: datetime | None = next_due_at(db)
    now = now or utc_now()
    return {
        "comparisons_24h": comparisons_since(db, now - timedelta(days=1)),
        "cursors": [cursor.to_dict() for cursor in list_cursors(db)],
        "queue": {"counts": queue_counts(db), "next_due_at": to_iso(due) if due else None},
        "dead": [
            {
                "id": i.id,
                "hub": i.hub,
                "repo_id": i.repo_id,
                "commit_sha": i.commit_sha,
                "attempts": i.attempts,
                "last_error": i.last_error,
            }
            for i in list_items(db, state="dead", limit=dead_limit)
        ],
        "alerts": alert_counts(db),
    }
