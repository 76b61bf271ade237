"""Durable per-hub listing cursors (``hub_cursors``): how far each listing pass has been covered.

One row per (hub, sort), sort being ``created`` or ``modified``. ``high_water`` is the listing time
up to which everything has been enqueued; a pass cut short by ``max_repos_per_cycle`` also records a
*resume band* ``(resume_after, resume_top]`` it has covered above the high water, so the next cycle
skips that band and continues below it instead of skipping the rest (see `monitor.scanner`).
Errors are recorded next to the cursor without moving it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from monitor.hubs.base import SortKey
from monitor.store.db import from_iso, to_iso

__all__ = ["Cursor", "get_cursor", "list_cursors", "record_cursor_error", "save_cursor"]


@dataclass(frozen=True, slots=True)
class Cursor:
    """One ``hub_cursors`` row.

    Attributes:
        high_water (`datetime | None`): everything listed at or before it is enqueued (``None``: never
            completed a pass).
        resume_after (`datetime | None`), resume_top (`datetime | None`): band covered by an
            interrupted pass (exclusive lower end, inclusive upper end), or ``None``.
        last_ok_at (`datetime | None`): end of the last pass that finished without a listing error.
        last_error (`str | None`), last_error_at (`datetime | None`): the last listing error.
    """

    hub: str
    sort: SortKey
    high_water: datetime | None
    resume_after: datetime | None
    resume_top: datetime | None
    last_ok_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Cursor:
        return cls(
            hub=row["hub"],
            sort=row["sort"],
            high_water=from_iso(row["high_water"]),
            resume_after=from_iso(row["resume_after"]),
            resume_top=from_iso(row["resume_top"]),
            last_ok_at=from_iso(row["last_ok_at"]),
            last_error=row["last_error"],
            last_error_at=from_iso(row["last_error_at"]),
            updated_at=from_iso(row["updated_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for ``hubsentry status --json``."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = to_iso(value) if isinstance(value, datetime) else value
        return out


def _opt(moment: datetime | None) -> str | None:
    return None if moment is None else to_iso(moment)


def get_cursor(db: Database, hub: str, sort: SortKey) -> Cursor | None:
    rows = list(db.query("SELECT * FROM hub_cursors WHERE hub = ? AND sort = ?", [hub, sort]))
    return Cursor.from_row(rows[0]) if rows else None


def list_cursors(db: Database) -> list[Cursor]:
    return [Cursor.from_row(row) for row in db.query("SELECT * FROM hub_cursors ORDER BY hub, sort")]


def save_cursor(
    db: Database,
    *,
    hub: str,
    sort: SortKey,
    high_water: datetime | None,
    resume_after: datetime | None,
    resume_top: datetime | None,
    now: datetime,
    ok: bool = True,
) -> None:
    """Store the progress of a pass; ``ok`` also stamps ``last_ok_at`` and clears the last error.

    Call it in the same transaction as (or after) the enqueue it reflects, never before.
    """
    stamp = to_iso(now)
    db.execute(
        "INSERT INTO hub_cursors (hub, sort, high_water, resume_after, resume_top, last_ok_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hub, sort) DO UPDATE SET "
        "high_water = excluded.high_water, "
        "resume_after = excluded.resume_after, resume_top = excluded.resume_top, "
        "last_ok_at = COALESCE(excluded.last_ok_at, last_ok_at), updated_at = excluded.updated_at"
        + (", last_error = NULL, last_error_at = NULL" if ok else ""),
        [hub, sort, _opt(high_water), _opt(resume_after), _opt(resume_top), stamp if ok else None, stamp],
    )


def record_cursor_error(db: Database, *, hub: str, sort: SortKey, error: str, now: datetime) -> None:
    """Record a listing error; the cursor position is left unchanged."""
    stamp = to_iso(now)
    db.execute(
        "INSERT INTO hub_cursors (hub, sort, last_error, last_error_at, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (hub, sort) DO UPDATE SET last_error = excluded.last_error, "
        "last_error_at = excluded.last_error_at, updated_at = excluded.updated_at",
        [hub, sort, error[:2000], stamp, stamp],
    )
