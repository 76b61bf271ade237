"""One read of what an operator checks first: cursors, queue, dead letters, alerts.

Used by ``hubsentry status`` (table or ``--json``), which adds the outbox summary from
`monitor.alerts.outbox.delivery_status`; read-only, so it is safe while the daemon runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlite_utils import Database

from monitor.store.alerts import alert_counts
from monitor.store.cursors import list_cursors
from monitor.store.db import to_iso
from monitor.store.queue import list_items, next_due_at, queue_counts

__all__ = ["collect_status"]


def collect_status(db: Database, *, dead_limit: int = 20) -> dict[str, Any]:
    """JSON-ready snapshot: ``cursors``, ``queue`` (counts, next due), ``dead`` (latest dead items)
    and ``alerts`` (counts per state)."""
    due: datetime | None = next_due_at(db)
    return {
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
