"""Every schema change is a numbered migration (sqlite-utils `Migrations`, set ``"hubsentry"``).

Migrations are recorded in ``_sqlite_migrations``; each transactional one runs in one transaction
with its record, so a failed upgrade leaves the previous schema intact. Never edit a released
migration: add ``m00N_...``. A database that has migrations this code does not know was written by a
newer HubSentry; we refuse to open it rather than corrupt it.

Tables are STRICT with explicit primary keys and CHECK constraints on every state column, so a bug
cannot write a state the queue or the outbox does not know.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database, Migrations

from monitor.errors import StoreError
from monitor.store.db import store_error

__all__ = ["MIGRATIONS", "MigrationStatus", "apply_migrations", "migration_status"]

MIGRATIONS = Migrations("hubsentry")
_NAMES: list[str] = []
"""Names of our migrations in order (what ``db migrate --list`` shows and what we know about)."""

F = TypeVar("F", bound=Callable[[Database], None])


def _migration(*, transactional: bool = True) -> Callable[[F], F]:
    def register(fn: F) -> F:
        _NAMES.append(fn.__name__)
        return MIGRATIONS(transactional=transactional)(fn)

    return register


@_migration(transactional=False)
def m001_enable_wal(db: Database) -> None:
    """WAL: readers never block the writer and the writer never blocks readers."""
    db.enable_wal()


_CORE_TABLES = (
    """
    CREATE TABLE hub_cursors (
        hub TEXT NOT NULL,
        sort TEXT NOT NULL CHECK (sort IN ('created', 'modified')),
        high_water TEXT,
        resume_after TEXT,
        resume_top TEXT,
        last_ok_at TEXT,
        last_error TEXT,
        last_error_at TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (hub, sort)
    ) STRICT
    """,
    """
    CREATE TABLE work_items (
        id INTEGER PRIMARY KEY,
        hub TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'running', 'done', 'failed', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        listed_at TEXT NOT NULL,
        listed_by TEXT NOT NULL DEFAULT 'created',
        started_at TEXT,
        finished_at TEXT,
        lease_owner TEXT,
        lease_expires_at TEXT,
        bytes_read INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        outcome_json TEXT,
        UNIQUE (hub, repo_id, commit_sha)
    ) STRICT
    """,
    "CREATE INDEX work_items_due ON work_items (state, next_attempt_at)",
    "CREATE INDEX work_items_lease ON work_items (state, lease_expires_at)",
    """
    CREATE TABLE protected_models (
        name TEXT PRIMARY KEY,
        owner TEXT,
        source TEXT NOT NULL,
        source_commit TEXT,
        algo TEXT NOT NULL,
        arch_json TEXT NOT NULL DEFAULT '{}',
        signature_json TEXT NOT NULL DEFAULT '{}',
        reference_path TEXT,
        reference_sha256 TEXT,
        created_at TEXT NOT NULL,
        notes TEXT
    ) STRICT
    """,
    """
    CREATE TABLE protected_files (
        name TEXT NOT NULL REFERENCES protected_models (name) ON DELETE CASCADE,
        path TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size >= 0),
        sha256 TEXT,
        PRIMARY KEY (name, path)
    ) STRICT
    """,
    "CREATE INDEX protected_files_sha256 ON protected_files (sha256)",
    """
    CREATE TABLE scan_results (
        hub TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        protected TEXT NOT NULL,
        algo TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('derived', 'inconclusive', 'independent')),
        p_value REAL,
        log10_p REAL,
        transform TEXT,
        finding_json TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (hub, repo_id, commit_sha, protected, algo)
    ) STRICT
    """,
    "CREATE INDEX scan_results_protected ON scan_results (protected, verdict)",
    """
    CREATE TABLE alerts (
        alert_key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        protected TEXT NOT NULL,
        owner TEXT,
        hub TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('derived', 'inconclusive', 'independent')),
        severity TEXT NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
        p_value REAL,
        log10_p REAL,
        transform TEXT,
        evidence_json TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'acked', 'resolved')),
        resolution TEXT CHECK (resolution IS NULL OR resolution IN ('true-positive', 'false-positive')),
        resolution_reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT
    """,
    "CREATE INDEX alerts_state ON alerts (state, seq)",
    "CREATE INDEX alerts_repo ON alerts (hub, repo_id)",
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_key TEXT NOT NULL REFERENCES alerts (alert_key) ON DELETE CASCADE,
        sink TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        sending_since TEXT,
        delivered_at TEXT,
        receipt_json TEXT,
        UNIQUE (alert_key, sink)
    ) STRICT
    """,
    "CREATE INDEX outbox_due ON outbox (sink, state, next_attempt_at)",
)


@_migration()
def m002_core_tables(db: Database) -> None:
    """Cursors, the work queue, the registry, scan results, alerts and the outbox."""
    for statement in _CORE_TABLES:
        db.execute(statement)


@_migration()
def m003_sink_health(db: Database) -> None:
    """Per alert sink: consecutive delivery failures since its last success (the retry backoff's base)."""
    db.execute(
        """
        CREATE TABLE sink_health (
            sink TEXT PRIMARY KEY,
            failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
            last_failure_at TEXT,
            last_error TEXT,
            last_success_at TEXT,
            updated_at TEXT NOT NULL
        ) STRICT
        """
    )


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """One migration: its name and when it was applied (``None``: pending)."""

    name: str
    applied_at: str | None


def migration_status(db: Database) -> list[MigrationStatus]:
    """Every known migration in order, applied or pending (read-only)."""
    applied = {m.name: m.applied_at for m in MIGRATIONS.applied(db)}
    return [MigrationStatus(name, applied.get(name)) for name in _NAMES]


def apply_migrations(db: Database, *, path: Path | str = "") -> list[str]:
    """Apply pending migrations; returns the names applied.

    Raises:
        `StoreError`: the database has migrations this version does not know (written by a newer
            HubSentry), or a migration failed (its changes are rolled back).
    """
    try:
        applied = [m.name for m in MIGRATIONS.applied(db)]
        unknown = [name for name in applied if name not in _NAMES]
        if unknown:
            raise StoreError(
                f"{path}: the database has migrations this HubSentry does not know ({', '.join(unknown)}): "
                "it was written by a newer version; upgrade HubSentry or restore a backup"
            )
        pending = [m.name for m in MIGRATIONS.pending(db)]
        if pending:
            MIGRATIONS.apply(db)
        return pending
    except sqlite3.Error as exc:
        raise store_error(exc, path=path, action="migrating the schema") from exc
