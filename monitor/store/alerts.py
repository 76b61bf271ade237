"""The alert lifecycle in the database: list, acknowledge, resolve (``alerts`` table).

Lifecycle (SOC style): ``new`` → ``acked`` (someone is looking) → ``resolved`` as ``true-positive`` or
``false-positive`` with a reason. Evidence (``evidence_json``) is written once by `record_outcome`
and never changed; only the triage columns move. Rows are returned as plain dicts (the column
layout), which is what `monitor.alerts.model.Alert.from_row` parses.

Operators type keys by prefix (``hubsentry alerts ack 3f9c2a``); `resolve_key` turns a unique prefix
into the full key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlite_utils import Database

from monitor.errors import HubSentryError
from monitor.store.db import to_iso

__all__ = [
    "ALERT_STATES",
    "RESOLUTIONS",
    "AlertNotFoundError",
    "Resolution",
    "ack_alert",
    "alert_counts",
    "get_alert",
    "list_alerts",
    "resolve_alert",
    "resolve_key",
]

ALERT_STATES = ("new", "acked", "resolved")
RESOLUTIONS = ("true-positive", "false-positive")
Resolution = Literal["true-positive", "false-positive"]
MIN_KEY_PREFIX = 6


class AlertNotFoundError(HubSentryError):
    """No alert (or more than one) matches the key or prefix given."""


def resolve_key(db: Database, key_or_prefix: str) -> str:
    """The full alert key for a key or a unique prefix of at least 6 hex characters.

    Raises:
        `AlertNotFoundError`: no match, several matches, or a prefix too short to be safe.
    """
    prefix = key_or_prefix.strip().lower()
    if len(prefix) < MIN_KEY_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        raise AlertNotFoundError(
            f"{key_or_prefix!r}: give the alert key or at least {MIN_KEY_PREFIX} of its hex digits"
        )
    rows = db.execute(
        "SELECT alert_key FROM alerts WHERE alert_key >= ? AND alert_key < ? ORDER BY alert_key LIMIT 2",
        [prefix, prefix + "g"],
    ).fetchall()
    if not rows:
        raise AlertNotFoundError(f"no alert with key {key_or_prefix!r} (see: hubsentry alerts list)")
    if len(rows) > 1:
        raise AlertNotFoundError(f"{key_or_prefix!r} matches several alerts; give more digits")
    return str(rows[0][0])


def get_alert(db: Database, key: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM alerts WHERE alert_key = ?", [key]))
    return rows[0] if rows else None


def list_alerts(
    db: Database,
    *,
    state: str | None = None,
    protected: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alert rows, newest first (by ``seq``), optionally filtered by state or protected model."""
    where, params = [], []
    for column, value in (("state", state), ("protected", protected)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return list(db.query(f"SELECT * FROM alerts {clause}ORDER BY seq DESC LIMIT ?", [*params, limit]))  # noqa: S608


def alert_counts(db: Database) -> dict[str, int]:
    """Number of alerts per state (every state present)."""
    counts = dict.fromkeys(ALERT_STATES, 0)
    for row in db.query("SELECT state, COUNT(*) AS n FROM alerts GROUP BY state"):
        counts[row["state"]] = row["n"]
    return counts


def ack_alert(db: Database, key: str, *, now: datetime) -> bool:
    """Acknowledge a ``new`` alert; returns False if it was already acked or resolved.

    Raises:
        `AlertNotFoundError`: no such alert.
    """
    if get_alert(db, key) is None:
        raise AlertNotFoundError(f"no alert with key {key!r}")
    cursor = db.execute(
        "UPDATE alerts SET state = 'acked', updated_at = ? WHERE alert_key = ? AND state = 'new'",
        [to_iso(now), key],
    )
    return cursor.rowcount == 1


def resolve_alert(db: Database, key: str, *, resolution: Resolution, reason: str, now: datetime) -> None:
    """Resolve an alert as a true or false positive, with the reason (re-resolving overwrites both).

    Raises:
        `AlertNotFoundError`: no such alert.
        `ValueError`: unknown resolution or empty reason.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}")
    if not reason.strip():
        raise ValueError("a resolution needs a reason (it is the audit trail)")
    cursor = db.execute(
        "UPDATE alerts SET state = 'resolved', resolution = ?, resolution_reason = ?, updated_at = ? "
        "WHERE alert_key = ?",
        [resolution, reason.strip()[:2000], to_iso(now), key],
    )
    if cursor.rowcount != 1:
        raise AlertNotFoundError(f"no alert with key {key!r}")
