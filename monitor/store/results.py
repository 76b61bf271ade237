"""Recording what a scan found: scan results, alerts and outbox rows, in one transaction with the item.

`record_outcome` is the only way a `ScanOutcome` enters the database. In the same transaction it
marks the work item ``done`` (checking the worker still holds its lease), upserts one
``scan_results`` row per finding, inserts an ``alerts`` row for every reportable finding at or above
``alerts.min_verdict`` (``INSERT OR IGNORE`` on `alert_key`, so re-scanning a commit never creates a
second alert) and, for each *new* alert only, one ``outbox`` row per configured sink. A crash at any
point leaves either all of it or none of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from monitor.findings import Finding, ScanOutcome, alert_key
from monitor.store.db import to_iso
from monitor.store.queue import WorkItem, complete

__all__ = [
    "VERDICT_RANK",
    "Recorded",
    "is_reportable",
    "list_scan_results",
    "record_outcome",
    "to_json",
]

VERDICT_RANK = {"independent": 0, "inconclusive": 1, "derived": 2}


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``, numpy scalars become Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item())
    return str(value)


def to_json(value: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens) of dataclass dicts, for every ``*_json`` column."""
    return json.dumps(_plain(value), ensure_ascii=False, allow_nan=False, sort_keys=True)


def is_reportable(finding: Finding, min_verdict: str) -> bool:
    """Whether a finding alerts under ``alerts.min_verdict``."""
    return finding.reportable and VERDICT_RANK[finding.verdict] >= VERDICT_RANK[min_verdict]


def _number(value: float) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record_outcome` wrote.

    Attributes:
        new_alerts (`tuple[str, ...]`): alert keys created now (each with its outbox rows).
        known_alerts (`tuple[str, ...]`): reportable findings whose alert already existed.
    """

    item_id: int
    new_alerts: tuple[str, ...]
    known_alerts: tuple[str, ...]


def _evidence(outcome: ScanOutcome, finding: Finding, *, now: datetime) -> dict[str, Any]:
    fields = outcome.to_dict()
    fields.pop("findings")
    return {**fields, "finding": asdict(finding), "created_at": to_iso(now)}


def record_outcome(
    db: Database,
    item: WorkItem,
    outcome: ScanOutcome,
    *,
    sinks: Sequence[str],
    min_verdict: str = "derived",
    owner: str | None,
    now: datetime,
    note: str | None = None,
) -> Recorded:
    """Store a finished scan: item done, results, new alerts and their outbox rows (one transaction).

    Run it through ``store.write(lambda db: record_outcome(db, ...))``.

    Args:
        item (`WorkItem`): the claimed item the outcome belongs to.
        outcome (`ScanOutcome`): must describe the item's (hub, repo, commit).
        sinks (`Sequence[str]`): outbox sinks, e.g. ``("slack:#model-ip", "log")``.
        min_verdict (`str`): ``derived`` or ``inconclusive``.
        owner (`str | None`): lease owner to check (``None`` skips the check).
        note (`str | None`): kept in ``last_error`` for "done, but..." outcomes (repo deleted, gated).

    Raises:
        `LeaseLostError`: the lease was lost; nothing is written.
        `ValueError`: the outcome is about another commit than the item.
    """
    if (outcome.hub, outcome.repo_id, outcome.commit) != (item.hub, item.repo_id, item.commit_sha):
        raise ValueError(
            f"outcome for {outcome.hub}:{outcome.repo_id}@{outcome.commit} "
            f"does not match work item {item.ref}"
        )
    stamp = to_iso(now)
    complete(
        db,
        item.id,
        owner=owner,
        outcome_json=to_json(outcome.to_dict()),
        bytes_read=outcome.bytes_read,
        requests=outcome.requests,
        now=now,
        note=note,
    )
    new: list[str] = []
    known: list[str] = []
    for finding in outcome.findings:
        finding_json = to_json(asdict(finding))
        db.execute(
            "INSERT INTO scan_results (hub, repo_id, commit_sha, protected, algo, verdict, p_value, log10_p, "
            "transform, finding_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hub, repo_id, commit_sha, protected, algo) DO UPDATE SET "
            "verdict = excluded.verdict, "
            "p_value = excluded.p_value, log10_p = excluded.log10_p, transform = excluded.transform, "
            "finding_json = excluded.finding_json, created_at = excluded.created_at",
            [
                outcome.hub,
                outcome.repo_id,
                outcome.commit,
                finding.protected,
                outcome.algo,
                finding.verdict,
                _number(finding.p_value),
                _number(finding.log10_p),
                finding.transform,
                finding_json,
                stamp,
            ],
        )
        if not is_reportable(finding, min_verdict):
            continue
        key = alert_key(
            protected=finding.protected,
            hub=outcome.hub,
            repo_id=outcome.repo_id,
            commit=outcome.commit,
            algo=outcome.algo,
        )
        cursor = db.execute(
            "INSERT OR IGNORE INTO alerts (alert_key, seq, protected, owner, hub, repo_id, commit_sha, "
            "verdict, "
            "severity, p_value, log10_p, transform, evidence_json, state, created_at, updated_at) "
            "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM alerts), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "'new', ?, ?)",
            [
                key,
                finding.protected,
                finding.owner,
                outcome.hub,
                outcome.repo_id,
                outcome.commit,
                finding.verdict,
                finding.severity,
                _number(finding.p_value),
                _number(finding.log10_p),
                finding.transform,
                to_json(_evidence(outcome, finding, now=now)),
                stamp,
                stamp,
            ],
        )
        if cursor.rowcount != 1:
            known.append(key)
            continue
        new.append(key)
        for sink in sinks:
            db.execute(
                "INSERT OR IGNORE INTO outbox (alert_key, sink, state, attempts, next_attempt_at, "
                "created_at) "
                "VALUES (?, ?, 'pending', 0, ?, ?)",
                [key, sink, stamp, stamp],
            )
    return Recorded(item_id=item.id, new_alerts=tuple(new), known_alerts=tuple(known))


def list_scan_results(
    db: Database,
    *,
    hub: str | None = None,
    repo_id: str | None = None,
    protected: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Scan results, newest first, with ``finding`` parsed from ``finding_json``."""
    where, params = [], []
    for column, value in (("hub", hub), ("repo_id", repo_id), ("protected", protected)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = db.query(f"SELECT * FROM scan_results {clause}ORDER BY created_at DESC LIMIT ?", [*params, limit])  # noqa: S608
    out = []
    for row in rows:
        row["finding"] = json.loads(row.pop("finding_json"))
        out.append(row)
    return out
