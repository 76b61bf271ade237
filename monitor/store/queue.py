"""The durable work queue: one row per (hub, repo, commit), processed at least once, recorded once.

Lifecycle of a ``work_items`` row::

    pending ──claim──> running ──complete──> done
       ^                 │  └──fail (attempts < max)──> failed ──(next_attempt_at due)──> claimed again
       │                 └──fail (attempts >= max)───> dead   (operator: hubsentry queue requeue)
       └──release (graceful stop) / requeue (operator)

* ``enqueue`` is ``INSERT OR IGNORE`` on UNIQUE(hub, repo_id, commit_sha): listing the same commit twice,
  or after a restart, never creates a second item.
* ``claim_due`` takes a *lease* (owner + expiry) and counts the attempt up front, so an item whose
  processing crashes the whole process still runs out of attempts instead of crash-looping forever;
  a lease that expired (its worker died) makes the item claimable again. The worker renews the leases
  of items it is still processing. ``reclaim_orphaned`` expires at once the leases of owners known to be
  dead (a restarted daemon on the same host), instead of waiting for the lease.
* Every state change after the claim checks the lease owner; a worker that lost its lease gets
  `LeaseLostError` and its transaction (outcome, alerts, outbox) is rolled back, because the new owner
  will record the same outcome.

All functions take the `sqlite_utils.Database` of a write transaction (``store.write(lambda db: ...)``)
or a read connection (``store.read()``) for the query functions, and an explicit ``now``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlite_utils import Database

from monitor.errors import HubSentryError
from monitor.store.db import from_iso, to_iso

__all__ = [
    "MAX_ERROR_CHARS",
    "WORK_STATES",
    "LeaseLostError",
    "NewItem",
    "WorkItem",
    "WorkState",
    "claim_due",
    "complete",
    "enqueue",
    "fail",
    "get_item",
    "list_items",
    "next_due_at",
    "next_due_by_hub",
    "queue_counts",
    "reclaim_orphaned",
    "release",
    "renew_leases",
    "requeue",
]

log = logging.getLogger(__name__)

WorkState = Literal["pending", "running", "done", "failed", "dead"]
WORK_STATES: tuple[WorkState, ...] = ("pending", "running", "done", "failed", "dead")
MAX_ERROR_CHARS = 2000
"""Error texts are cut to this length: a hostile server must not be able to fill the database."""


class LeaseLostError(HubSentryError):
    """This worker no longer holds the lease of a work item (it expired and was claimed again)."""


@dataclass(frozen=True, slots=True)
class NewItem:
    """A (hub, repo, commit) to enqueue.

    Attributes:
        listed_by (`str`): why it was enqueued: ``created``/``modified`` (listing pass),
            ``commit-moved`` (the repo moved while being read), ``manual``.
    """

    hub: str
    repo_id: str
    commit_sha: str
    listed_by: str = "created"


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One ``work_items`` row. Times are aware UTC datetimes."""

    id: int
    hub: str
    repo_id: str
    commit_sha: str
    state: WorkState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    listed_at: datetime
    listed_by: str
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    bytes_read: int
    requests: int
    outcome_json: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkItem:
        return cls(
            id=row["id"],
            hub=row["hub"],
            repo_id=row["repo_id"],
            commit_sha=row["commit_sha"],
            state=row["state"],
            attempts=row["attempts"],
            next_attempt_at=_required_time(row["next_attempt_at"]),
            last_error=row["last_error"],
            listed_at=_required_time(row["listed_at"]),
            listed_by=row["listed_by"],
            started_at=from_iso(row["started_at"]),
            finished_at=from_iso(row["finished_at"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=from_iso(row["lease_expires_at"]),
            bytes_read=row["bytes_read"],
            requests=row["requests"],
            outcome_json=row["outcome_json"],
        )

    @property
    def ref(self) -> str:
        """``hub:org/name@commit12`` for log lines."""
        return f"{self.hub}:{self.repo_id}@{self.commit_sha[:12]}"

    def outcome(self) -> dict[str, Any] | None:
        """The stored `ScanOutcome` as a dict (``None`` until done)."""
        return None if self.outcome_json is None else json.loads(self.outcome_json)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for ``hubsentry queue list --json``."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = to_iso(value) if isinstance(value, datetime) else value
        out.pop("outcome_json")
        out["outcome"] = self.outcome()
        return out


def _required_time(text: str) -> datetime:
    moment = from_iso(text)
    assert moment is not None
    return moment


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def enqueue(db: Database, items: Iterable[NewItem], *, now: datetime) -> list[bool]:
    """Insert items that are not queued yet; returns, per item, whether it was new."""
    stamp = to_iso(now)
    inserted: list[bool] = []
    for item in items:
        cursor = db.execute(
            "INSERT OR IGNORE INTO work_items (hub, repo_id, commit_sha, state, next_attempt_at, listed_at, "
            "listed_by) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            [item.hub, item.repo_id, item.commit_sha, stamp, stamp, item.listed_by],
        )
        inserted.append(cursor.rowcount == 1)
    return inserted


def claim_due(
    db: Database,
    *,
    owner: str,
    limit: int,
    lease_s: float,
    max_attempts: int,
    now: datetime,
    exclude_hubs: Sequence[str] = (),
) -> list[WorkItem]:
    """Lease up to ``limit`` due items to ``owner``, oldest due first; counts one attempt each.

    Due means: ``pending``/``failed`` with ``next_attempt_at <= now``, or ``running`` with an expired
    lease (its worker died). An expired item that already used ``max_attempts`` is marked ``dead``
    instead: it most likely crashes whatever processes it.

    Args:
        exclude_hubs (`Sequence[str]`): hubs to skip (e.g. while rate-limited).
    """
    stamp = to_iso(now)
    hub_filter = ""
    params: list[Any] = [stamp, stamp]
    if exclude_hubs:
        hub_filter = f" AND hub NOT IN ({', '.join('?' * len(exclude_hubs))})"
        params += list(exclude_hubs)
    crashed = db.execute(
        "UPDATE work_items SET state = 'dead', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
        "last_error = COALESCE(last_error || ' | ', '') || 'lease expired after the last allowed attempt "
        "(the worker died while processing it)' "
        "WHERE state = 'running' AND lease_expires_at <= ? AND attempts >= ?",
        [stamp, stamp, max_attempts],
    )
    if crashed.rowcount:
        log.error(
            "%d work item(s) marked dead: their worker died on the last allowed attempt "
            "(see: hubsentry queue list --state dead)",
            crashed.rowcount,
        )
    rows = list(
        db.query(
            "SELECT id FROM work_items WHERE ((state IN ('pending', 'failed') AND next_attempt_at <= ?) "  # noqa: S608
            f"OR (state = 'running' AND lease_expires_at <= ?)){hub_filter} "
            "ORDER BY next_attempt_at, id LIMIT ?",
            [*params, limit],
        )
    )
    ids = [row["id"] for row in rows]
    if not ids:
        return []
    expires = to_iso(now + timedelta(seconds=lease_s))
    marks = ", ".join("?" * len(ids))
    db.execute(
        "UPDATE work_items SET state = 'running', attempts = attempts + 1, lease_owner = ?, "  # noqa: S608
        f"lease_expires_at = ?, started_at = ?, finished_at = NULL WHERE id IN ({marks})",
        [owner, expires, stamp, *ids],
    )
    claimed = db.query(f"SELECT * FROM work_items WHERE id IN ({marks}) ORDER BY next_attempt_at, id", ids)  # noqa: S608
    return [WorkItem.from_row(row) for row in claimed]


def renew_leases(db: Database, ids: Sequence[int], *, owner: str, lease_s: float, now: datetime) -> list[int]:
    """Extend the leases ``owner`` still holds; returns the ids whose lease was lost."""
    if not ids:
        return []
    expires = to_iso(now + timedelta(seconds=lease_s))
    lost = []
    for item_id in ids:
        cursor = db.execute(
            "UPDATE work_items SET lease_expires_at = ? "
            "WHERE id = ? AND state = 'running' AND lease_owner = ?",
            [expires, item_id, owner],
        )
        if cursor.rowcount != 1:
            lost.append(item_id)
    return lost


def reclaim_orphaned(
    db: Database, *, is_dead: Callable[[str, datetime], bool], now: datetime
) -> dict[str, list[int]]:
    """Expire now the live leases whose owner ``is_dead(owner, claimed_at)`` says is gone for sure.

    The items become claimable at once through the usual expired-lease path of `claim_due` (the crashed
    attempt stays counted, so an item that kills its worker still ends ``dead``). Returns the ids reclaimed,
    by owner.
    """
    stamp = to_iso(now)
    rows = db.execute(
        "SELECT id, lease_owner, started_at FROM work_items "
        "WHERE state = 'running' AND lease_owner IS NOT NULL AND lease_expires_at > ?",
        [stamp],
    ).fetchall()
    verdicts: dict[tuple[str, str | None], bool] = {}
    reclaimed: dict[str, list[int]] = {}
    for item_id, owner, started_at in rows:
        key = (owner, started_at)
        if key not in verdicts:
            verdicts[key] = is_dead(owner, _required_time(started_at)) if started_at else False
        if not verdicts[key]:
            continue
        cursor = db.execute(
            "UPDATE work_items SET lease_expires_at = ? "
            "WHERE id = ? AND state = 'running' AND lease_owner = ?",
            [stamp, item_id, owner],
        )
        if cursor.rowcount:
            reclaimed.setdefault(owner, []).append(item_id)
    return reclaimed


def _owned(db: Database, item_id: int, owner: str | None) -> None:
    if owner is None:
        return
    row = db.execute("SELECT state, lease_owner FROM work_items WHERE id = ?", [item_id]).fetchone()
    if row is None or row[0] != "running" or row[1] != owner:
        raise LeaseLostError(f"work item {item_id}: lease no longer held by {owner}")


def complete(
    db: Database,
    item_id: int,
    *,
    owner: str | None,
    outcome_json: str,
    bytes_read: int,
    requests: int,
    now: datetime,
    note: str | None = None,
) -> None:
    """Mark an item ``done`` with its outcome (``note`` goes to ``last_error`` for "done, but...").

    Raises:
        `LeaseLostError`: ``owner`` no longer holds the item (pass ``owner=None`` to skip the check).
    """
    _owned(db, item_id, owner)
    db.execute(
        "UPDATE work_items SET state = 'done', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
        "outcome_json = ?, bytes_read = ?, requests = ?, last_error = ? WHERE id = ?",
        [to_iso(now), outcome_json, bytes_read, requests, _clip(note) if note else None, item_id],
    )


def fail(
    db: Database,
    item_id: int,
    *,
    owner: str | None,
    error: str,
    retry_at: datetime,
    max_attempts: int,
    now: datetime,
    refund_attempt: bool = False,
) -> WorkState:
    """Record a failed attempt: ``failed`` (retried at ``retry_at``) or ``dead`` after ``max_attempts``.

    Args:
        refund_attempt (`bool`): do not count this attempt (rate limits and store errors are not the
            item's fault, so they must not push it towards ``dead``).

    Returns:
        The new state.

    Raises:
        `LeaseLostError`: ``owner`` no longer holds the item.
    """
    _owned(db, item_id, owner)
    row = db.execute("SELECT attempts FROM work_items WHERE id = ?", [item_id]).fetchone()
    attempts = max(0, row[0] - 1) if refund_attempt else row[0]
    state: WorkState = "dead" if attempts >= max_attempts else "failed"
    db.execute(
        "UPDATE work_items SET state = ?, attempts = ?, last_error = ?, next_attempt_at = ?, "
        "finished_at = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
        [state, attempts, _clip(error), to_iso(retry_at), to_iso(now) if state == "dead" else None, item_id],
    )
    return state


def release(db: Database, ids: Sequence[int], *, owner: str, now: datetime) -> int:
    """Give claimed-but-unstarted items back (graceful stop): ``pending``, attempt not counted."""
    released = 0
    for item_id in ids:
        cursor = db.execute(
            "UPDATE work_items SET state = 'pending', attempts = MAX(attempts - 1, 0), lease_owner = NULL, "
            "lease_expires_at = NULL, started_at = NULL, next_attempt_at = ? "
            "WHERE id = ? AND state = 'running' AND lease_owner = ?",
            [to_iso(now), item_id, owner],
        )
        released += cursor.rowcount
    return released


def requeue(
    db: Database, *, now: datetime, ids: Sequence[int] = (), state: WorkState | None = None
) -> list[int]:
    """Make items due again with a fresh attempt count (operator action); returns the ids requeued.

    ``ids`` selects items by id; ``state`` selects every item in that state (e.g. ``dead``). Items
    currently ``running`` under a live lease are left alone.
    """
    stamp = to_iso(now)
    where: list[str] = []
    params: list[Any] = []
    if ids:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params += list(ids)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if not where:
        raise ValueError("requeue needs ids or a state")
    rows = db.execute(
        f"SELECT id FROM work_items WHERE {' AND '.join(where)} "  # noqa: S608
        "AND NOT (state = 'running' AND lease_expires_at > ?)",
        [*params, stamp],
    ).fetchall()
    chosen = [row[0] for row in rows]
    for item_id in chosen:
        db.execute(
            "UPDATE work_items SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, finished_at = NULL WHERE id = ?",
            [stamp, item_id],
        )
    return chosen


def get_item(db: Database, item_id: int) -> WorkItem | None:
    rows = list(db.query("SELECT * FROM work_items WHERE id = ?", [item_id]))
    return WorkItem.from_row(rows[0]) if rows else None


def list_items(
    db: Database,
    *,
    state: WorkState | None = None,
    hub: str | None = None,
    repo_id: str | None = None,
    limit: int = 100,
) -> list[WorkItem]:
    """Items, most recently listed first, optionally filtered."""
    where, params = [], []
    for column, value in (("state", state), ("hub", hub), ("repo_id", repo_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = db.query(f"SELECT * FROM work_items {clause}ORDER BY id DESC LIMIT ?", [*params, limit])  # noqa: S608
    return [WorkItem.from_row(row) for row in rows]


def queue_counts(db: Database) -> dict[str, int]:
    """Number of items per state (every state present, zeros included)."""
    counts: dict[str, int] = dict.fromkeys(WORK_STATES, 0)
    for row in db.query("SELECT state, COUNT(*) AS n FROM work_items GROUP BY state"):
        counts[row["state"]] = row["n"]
    return counts


def next_due_at(db: Database) -> datetime | None:
    """When the next pending/failed item becomes due (``None``: nothing waiting)."""
    row = db.execute(
        "SELECT MIN(next_attempt_at) FROM work_items WHERE state IN ('pending', 'failed')"
    ).fetchone()
    return from_iso(row[0]) if row and row[0] else None


def next_due_by_hub(db: Database) -> dict[str, datetime]:
    """Per hub, when its next item becomes claimable: the earliest retry of a pending/failed item or the
    earliest lease expiry of a running one (its worker may have died). Hubs with nothing waiting are left out.
    """
    rows = db.execute(
        "SELECT hub, MIN(due) FROM ("
        "  SELECT hub, next_attempt_at AS due FROM work_items WHERE state IN ('pending', 'failed')"
        "  UNION ALL"
        "  SELECT hub, lease_expires_at AS due FROM work_items"
        "  WHERE state = 'running' AND lease_expires_at IS NOT NULL"
        ") GROUP BY hub"
    ).fetchall()
    return {hub: _required_time(due) for hub, due in rows if due}
