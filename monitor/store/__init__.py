"""HubSentry's SQLite store: one writer thread, WAL, numbered migrations, typed queries per table.

Example::

    from monitor.store import Store, enqueue, NewItem, utc_now
    with Store("hubsentry.db") as store:
        store.write(lambda db: enqueue(db, [NewItem("huggingface", "org/name", sha)], now=utc_now()))
        with store.read() as db:
            print(queue_counts(db))

Modules: `db` (Store, connections, times), `migrations`, `queue` (work_items), `cursors`
(hub_cursors), `results` (record_outcome, scan_results), `alerts` (triage), `protected` (registry
rows), `status` (operator summary). The ``outbox`` table is written by `results.record_outcome` and
consumed by `monitor.alerts.outbox` / `monitor.alerts.delivery`.
"""

from monitor.store.alerts import (
    ALERT_STATES,
    RESOLUTIONS,
    AlertNotFoundError,
    Resolution,
    ack_alert,
    alert_counts,
    get_alert,
    list_alerts,
    resolve_alert,
    resolve_key,
)
from monitor.store.cursors import Cursor, get_cursor, list_cursors, record_cursor_error, save_cursor
from monitor.store.db import Store, connect, from_iso, store_error, to_iso, utc_now
from monitor.store.migrations import MIGRATIONS, MigrationStatus, apply_migrations, migration_status
from monitor.store.protected import (
    ProtectedExistsError,
    ProtectedFile,
    ProtectedModel,
    add_protected,
    find_files_by_sha256,
    get_protected,
    list_protected,
    remove_protected,
)
from monitor.store.queue import (
    WORK_STATES,
    LeaseLostError,
    NewItem,
    WorkItem,
    WorkState,
    claim_due,
    complete,
    enqueue,
    fail,
    get_item,
    list_items,
    next_due_at,
    next_due_by_hub,
    queue_counts,
    reclaim_orphaned,
    release,
    renew_leases,
    requeue,
)
from monitor.store.results import (
    VERDICT_RANK,
    Recorded,
    is_reportable,
    list_scan_results,
    record_outcome,
    to_json,
)
from monitor.store.status import collect_status

__all__ = [
    "ALERT_STATES",
    "MIGRATIONS",
    "RESOLUTIONS",
    "VERDICT_RANK",
    "WORK_STATES",
    "AlertNotFoundError",
    "Cursor",
    "LeaseLostError",
    "MigrationStatus",
    "NewItem",
    "ProtectedExistsError",
    "ProtectedFile",
    "ProtectedModel",
    "Recorded",
    "Resolution",
    "Store",
    "WorkItem",
    "WorkState",
    "ack_alert",
    "add_protected",
    "alert_counts",
    "apply_migrations",
    "claim_due",
    "collect_status",
    "complete",
    "connect",
    "enqueue",
    "fail",
    "find_files_by_sha256",
    "from_iso",
    "get_alert",
    "get_cursor",
    "get_item",
    "get_protected",
    "is_reportable",
    "list_alerts",
    "list_cursors",
    "list_items",
    "list_protected",
    "list_scan_results",
    "migration_status",
    "next_due_at",
    "next_due_by_hub",
    "queue_counts",
    "reclaim_orphaned",
    "record_cursor_error",
    "record_outcome",
    "release",
    "remove_protected",
    "renew_leases",
    "requeue",
    "resolve_alert",
    "resolve_key",
    "save_cursor",
    "store_error",
    "to_iso",
    "to_json",
    "utc_now",
]
