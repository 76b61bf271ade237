"""The SQLite store: one writer thread, short-lived readers, WAL, numbered migrations.

Why one writer: with several connections writing, SQLite's deferred transactions fail with
``database is locked`` even with a busy timeout (a reader that upgrades to a writer after another
commit gets ``SQLITE_BUSY_SNAPSHOT`` at once; measured: 2,237 of 2,400 transactions failed with 8
threads in WAL mode). So every write in this process goes through `Store.write` / `Store.submit`,
which run ``fn(db)`` on the writer thread inside ``BEGIN IMMEDIATE ... COMMIT``; reads open their
own connection (`Store.read`). Another *process* (e.g. ``hubsentry alerts ack`` while the daemon runs)
is safe too: ``BEGIN IMMEDIATE`` takes the write lock up front, so it waits up to the busy timeout
instead of failing half-way.

Failures never kill the writer thread: an exception raised by ``fn`` rolls its transaction back and
is re-raised in the caller; SQLite errors (disk full, I/O error, lock timeout) become `StoreError`
with the reason and what to do, and the writer keeps serving the next write.

Times are stored as fixed-width UTC ISO-8601 text (``2026-11-27T12:00:00.000000Z``) so that string
order is time order in SQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from monitor.errors import StoreError

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "Store",
    "connect",
    "from_iso",
    "store_error",
    "to_iso",
    "utc_now",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 30.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_iso(moment: datetime) -> str:
    """Fixed-width UTC text for SQLite (string order == time order). Naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def from_iso(text: str | None) -> datetime | None:
    """Parse text written by `to_iso` (or any ISO-8601 timestamp) into aware UTC; ``None`` stays ``None``."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_HINTS = {
    "SQLITE_FULL": "the disk (or the database's max_page_count) is full: free space, then retry; "
    "nothing of this write was kept",
    "SQLITE_BUSY": "another process held the write lock longer than the busy timeout; "
    "is a second daemon running on this database?",
    "SQLITE_LOCKED": "the database is locked by another connection of this process",
    "SQLITE_READONLY": "the database file or its folder is read-only for this user",
    "SQLITE_CORRUPT": "the database file is corrupt: restore the last backup (see docs/operations.md)",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_CANTOPEN": "cannot open the database file: check the path and permissions of its folder",
    "SQLITE_IOERR": "disk I/O error: check the disk and the kernel log; nothing of this write was kept",
}


def store_error(exc: sqlite3.Error, *, path: Path | str, action: str) -> StoreError:
    """A `StoreError` that says what failed, SQLite's reason, and what an operator can do about it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    primary = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    hint = _HINTS.get(name) or _HINTS.get(primary, "")
    detail = f" [{name}]" if name else ""
    message = f"{path}: {action} failed: {exc}{detail}"
    return StoreError(f"{message}; {hint}" if hint else message)


def connect(
    path: Path | str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, readonly: bool = False
) -> Database:
    """Open a connection with HubSentry's per-connection settings.

    ``foreign_keys=ON`` (SQLite's default is off per connection), ``synchronous=NORMAL`` (safe in WAL:
    a power cut may lose the last commits but never corrupts), and a busy timeout. Read connections
    are ``query_only`` so a bug cannot write behind the writer thread's back.
    """
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise store_error(exc, path=path, action="opening the database") from exc
    return Database(conn, execute_plugins=False)


@dataclass
class _Job:
    fn: Callable[[Database], Any]
    future: Future[Any]


_STOP = object()


class Store:
    """The HubSentry database: single writer thread, migrations applied on open.

    Example::

        with Store("hubsentry.db") as store:
            store.write(lambda db: db.execute("UPDATE alerts SET state='acked' WHERE alert_key=?", [key]))
            with store.read() as db:
                rows = list(db.query("SELECT * FROM alerts"))

    Args:
        path (`str | Path`): database file (created if missing, with its parent folder).
        busy_timeout_s (`float`): how long any connection waits for a lock.
        migrate (`bool`): apply pending migrations on open (``hubsentry db migrate`` passes False to
            list them first).

    Raises:
        `StoreError`: the file cannot be opened or migrated, or it was written by a newer HubSentry.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{self.path.parent}: cannot create the database folder: {exc.strerror}"
            ) from exc
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._db = connect(self.path, busy_timeout_s=busy_timeout_s)
        if migrate:
            from monitor.store.migrations import apply_migrations

            try:
                apply_migrations(self._db, path=self.path)
            except BaseException:
                self._db.close()
                raise
        self._thread = threading.Thread(target=self._run, name="hubsentry-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ writing

    def submit(self, fn: Callable[[Database], T]) -> Future[T]:
        """Queue ``fn(db)`` to run in its own ``BEGIN IMMEDIATE`` transaction on the writer thread.

        The returned future holds ``fn``'s result, or its exception (SQLite errors as `StoreError`).
        ``fn`` must only touch the database: it runs once, and a failure rolls back all it wrote.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("Store.submit called from inside a write: do the work in the same fn")
        if self._closed.is_set():
            raise StoreError(f"{self.path}: the store is closed")
        future: Future[T] = Future()
        self._queue.put(_Job(fn, future))
        return future

    def write(self, fn: Callable[[Database], T], *, timeout: float | None = None) -> T:
        """Run ``fn(db)`` in a write transaction and return its result (blocking)."""
        return self.submit(fn).result(timeout=timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                break
            assert isinstance(job, _Job)
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = self._transaction(job.fn)
            except BaseException as exc:  # the writer thread must survive anything a job does
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
        self._db.close()

    def _transaction(self, fn: Callable[[Database], T]) -> T:
        conn = self._db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._recover()
            raise store_error(exc, path=self.path, action="starting a write") from exc
        try:
            result = fn(self._db)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._recover()
            raise store_error(exc, path=self.path, action="writing") from exc
        except BaseException:
            self._recover()
            raise
        return result

    def _recover(self) -> None:
        """Roll back whatever is left; if the connection itself is broken, open a new one."""
        try:
            if self._db.conn.in_transaction:
                self._db.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("%s: rollback failed (%s); reopening the write connection", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            try:
                self._db = connect(self.path, busy_timeout_s=self.busy_timeout_s)
            except StoreError as reopen_exc:
                log.error("%s", reopen_exc)

    # ------------------------------------------------------------------------------------ reading

    @contextlib.contextmanager
    def read(self) -> Iterator[Database]:
        """A short-lived read-only connection (sees every committed write)."""
        db = connect(self.path, busy_timeout_s=self.busy_timeout_s, readonly=True)
        try:
            yield db
        except sqlite3.Error as exc:
            raise store_error(exc, path=self.path, action="reading") from exc
        finally:
            db.close()

    # ------------------------------------------------------------------------------------ lifecycle

    def close(self, *, timeout: float = 30.0) -> None:
        """Finish queued writes, then close the write connection. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.error("%s: writer thread did not finish within %.0fs", self.path, timeout)
            return
        # a submit that raced with close() queued its job behind the stop marker: fail it, never hang it
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(StoreError(f"{self.path}: the store is closed"))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"
