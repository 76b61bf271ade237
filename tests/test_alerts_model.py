"""`Alert.from_row` reads exactly what the store's `record_outcome` writes; bad rows fail clearly."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitor.alerts.model import Alert, AlertDataError, parse_time
from monitor.findings import Finding, ScanOutcome, alert_key
from monitor.store.db import Store
from monitor.store.queue import NewItem, claim_due, enqueue
from monitor.store.results import record_outcome

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SHA = "ab" * 20


def outcome_and_finding(**finding_kw) -> tuple[ScanOutcome, Finding]:
    finding = Finding(
        **{
            "protected": "acme/guard",
            "owner": "U0AAAAAAA",
            "verdict": "derived",
            "p_value": 0.0,
            "log10_p": -812.25,
            "null": "independent initialisation",
            "transform": "identity + GGUF Q4_K",
            "matched": "384/384 residual dims",
            "tests": ({"name": "t", "p_value": 0.0, "log10_p": -812.25, "details": {"k": [1, 2]}},),
            "exact_files": ("tokenizer.json",),
            "severity": "critical",
            **finding_kw,
        }
    )
    outcome = ScanOutcome(
        hub="huggingface",
        repo_id="someorg/guard-gguf",
        commit=SHA,
        url=f"https://huggingface.co/someorg/guard-gguf/tree/{SHA}",
        weight_files=("guard.Q4_K.gguf",),
        weight_format="gguf:Q4_K",
        bytes_read=2_000_000,
        requests=5,
        findings=(finding,),
        notes=("README.md skipped",),
        reproduce="hubsentry compare acme/guard someorg/guard-gguf",
    )
    return outcome, finding


def stored_row(tmp_path, outcome: ScanOutcome) -> dict:
    with Store(tmp_path / "hs.db") as store:

        def fn(db):
            enqueue(db, [NewItem(outcome.hub, outcome.repo_id, outcome.commit)], now=NOW)
            (item,) = claim_due(db, owner="t", limit=1, lease_s=60, max_attempts=3, now=NOW)
            return record_outcome(db, item, outcome, sinks=("log",), owner="t", now=NOW)

        recorded = store.write(fn)
        with store.read() as db:
            (row,) = db.query("SELECT * FROM alerts WHERE alert_key = ?", [recorded.new_alerts[0]])
    return row


def test_from_row_reads_what_record_outcome_writes(tmp_path):
    outcome, finding = outcome_and_finding()
    alert = Alert.from_row(stored_row(tmp_path, outcome))
    expected = Alert.from_scan(outcome, finding, seq=1, created_at=NOW)
    assert alert.alert_key == alert_key(
        protected="acme/guard", hub="huggingface", repo_id="someorg/guard-gguf", commit=SHA
    )
    # The stored p-value is NULL-able REAL; the float 0.0 survives, and log10_p carries the magnitude.
    assert alert.finding.p_value == 0.0
    assert alert.finding.log10_p == -812.25
    assert alert == expected


def test_from_row_accepts_flat_evidence_and_prefers_columns():
    row = {
        "alert_key": "k1",
        "seq": 3,
        "protected": "acme/guard",
        "owner": None,
        "hub": "huggingface",
        "repo_id": "a/b",
        "commit_sha": SHA,
        "verdict": "inconclusive",
        "severity": "medium",
        "p_value": None,
        "log10_p": None,
        "transform": "pruned",
        "evidence_json": json.dumps(
            {"verdict": "derived", "null": "H0", "matched": "m", "p_value": 1e-3, "log10_p": -3, "url": "u"}
        ),
        "state": "acked",
        "created_at": "2026-11-27T09:00:00.000000Z",
    }
    alert = Alert.from_row(row)
    assert alert.finding.verdict == "inconclusive"
    assert alert.finding.p_value == 1e-3  # column NULL (non-finite at write time) → evidence value
    assert alert.finding.null == "H0"
    assert alert.state == "acked"
    assert alert.created_at == NOW


def test_missing_numbers_become_nan_not_zero():
    row = {
        "alert_key": "k",
        "seq": 1,
        "protected": "p",
        "hub": "h",
        "repo_id": "r",
        "commit_sha": "c",
        "verdict": "derived",
        "severity": "high",
        "evidence_json": "{}",
        "created_at": "2026-11-27T09:00:00Z",
    }
    alert = Alert.from_row(row)
    assert math.isnan(alert.finding.p_value)
    assert math.isnan(alert.finding.log10_p)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence_json": "{not json"}, "not JSON"),
        ({"evidence_json": "[1, 2]"}, "not a JSON object"),
        ({"verdict": "stolen"}, "unknown verdict"),
        ({"severity": "urgent"}, "unknown severity"),
        ({"seq": "x"}, "malformed row"),
        ({"created_at": "yesterday"}, "not ISO-8601"),
    ],
)
def test_malformed_rows_raise_alert_data_error(change, message):
    row = {
        "alert_key": "k",
        "seq": 1,
        "protected": "p",
        "hub": "h",
        "repo_id": "r",
        "commit_sha": "c",
        "verdict": "derived",
        "severity": "high",
        "evidence_json": "{}",
        "created_at": "2026-11-27T09:00:00Z",
        **change,
    }
    with pytest.raises(AlertDataError, match=message):
        Alert.from_row(row)


def test_parse_time_variants():
    assert parse_time("2026-11-27T09:00:00.000000Z") == NOW
    assert parse_time("2026-11-27T09:00:00") == NOW
    assert parse_time(NOW.timestamp()) == NOW
    assert parse_time(NOW.astimezone(timezone(timedelta(hours=2)))) == NOW
    with pytest.raises(AlertDataError):
        parse_time(None)
    with pytest.raises(AlertDataError):
        parse_time(True)
