"""The SQLite store on real files: single writer, migrations, disk full, queue, cursors, outcomes, alerts."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from monitor.errors import StoreError
from monitor.findings import Finding, ScanOutcome, alert_key
from monitor.store import (
    AlertNotFoundError,
    LeaseLostError,
    NewItem,
    ProtectedExistsError,
    ProtectedFile,
    ProtectedModel,
    Store,
    WorkItem,
    ack_alert,
    add_protected,
    alert_counts,
    claim_due,
    collect_status,
    complete,
    enqueue,
    fail,
    find_files_by_sha256,
    get_cursor,
    get_item,
    get_protected,
    list_alerts,
    list_items,
    list_protected,
    list_scan_results,
    migration_status,
    queue_counts,
    record_cursor_error,
    record_outcome,
    release,
    remove_protected,
    renew_leases,
    requeue,
    resolve_alert,
    resolve_key,
    save_cursor,
    to_iso,
)
from monitor.store.db import from_iso

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SHA = "a" * 40
SHA2 = "b" * 40


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "h.db") as s:
        yield s


def claim(
    store: Store,
    *,
    owner: str = "w1",
    now: datetime = T0,
    limit: int = 10,
    lease_s: float = 60,
    max_attempts: int = 3,
    exclude: tuple[str, ...] = (),
) -> list[WorkItem]:
    return store.write(
        lambda db: claim_due(
            db,
            owner=owner,
            limit=limit,
            lease_s=lease_s,
            max_attempts=max_attempts,
            now=now,
            exclude_hubs=exclude,
        )
    )


def add(store: Store, *items: NewItem, now: datetime = T0) -> list[bool]:
    return store.write(lambda db: enqueue(db, items, now=now))


# ------------------------------------------------------------------------------------------- Store


def test_open_applies_migrations_in_wal_and_reopens_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "h.db"
    with Store(path) as store, store.read() as db:
        assert db.journal_mode == "wal"
        status = migration_status(db)
        assert [m.name for m in status] == ["m001_enable_wal", "m002_core_tables", "m003_sink_health"]
        assert all(m.applied_at for m in status)
        for table in (
            "hub_cursors",
            "work_items",
            "protected_models",
            "protected_files",
            "scan_results",
            "alerts",
            "outbox",
            "sink_health",
        ):
            assert db[table].exists()
        assert "STRICT" in db["work_items"].schema
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with Store(path) as again, again.read() as db:
        assert len(list(db.query("SELECT * FROM _sqlite_migrations"))) == 3


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    Store(path).close()
    db = Database(path)
    db["_sqlite_migrations"].insert({"migration_set": "hubsentry", "name": "m999_future", "applied_at": "x"})
    db.close()
    with pytest.raises(StoreError, match="written by a newer version"):
        Store(path)


def test_write_returns_result_and_read_sees_it(store: Store) -> None:
    assert store.write(lambda db: enqueue(db, [NewItem("hf", "a/b", SHA)], now=T0)) == [True]
    with store.read() as db:
        assert queue_counts(db)["pending"] == 1
        with pytest.raises(sqlite3.OperationalError):
            db.execute("DELETE FROM work_items")  # read connections are query_only


def test_failing_write_rolls_back_and_the_writer_survives(store: Store) -> None:
    def half_then_fail(db: Database) -> None:
        enqueue(db, [NewItem("hf", "a/b", SHA)], now=T0)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        store.write(half_then_fail)
    with pytest.raises(StoreError, match="writing failed"):
        store.write(lambda db: db.execute("INSERT INTO work_items (hub) VALUES ('x')"))
    assert add(store, NewItem("hf", "c/d", SHA)) == [True]
    with store.read() as db:
        assert [i.repo_id for i in list_items(db)] == ["c/d"]


def test_submit_from_inside_a_write_is_refused(store: Store) -> None:
    with pytest.raises(RuntimeError, match="inside a write"):
        store.write(lambda db: store.submit(lambda db2: None))


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.write(lambda db: None)


def test_concurrent_submitters_never_hit_database_is_locked(tmp_path: Path) -> None:
    """8 threads of this process plus a second Store on the same file (another process's writer)."""
    path = tmp_path / "h.db"
    errors: list[BaseException] = []
    with Store(path) as store, Store(path) as other:

        def hammer(target: Store, worker: int) -> None:
            try:
                for i in range(150):
                    target.write(lambda db, i=i: enqueue(db, [NewItem("hf", f"o{worker}/r{i}", SHA)], now=T0))
                    with target.read() as db:
                        queue_counts(db)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(store if w % 2 else other, w)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with store.read() as db:
            assert queue_counts(db)["pending"] == 8 * 150


def test_disk_full_is_a_store_error_and_loses_nothing_after_the_fix(store: Store) -> None:
    add(store, NewItem("hf", "keep/me", SHA))
    pages = store.write(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
    store.write(lambda db: db.execute(f"PRAGMA max_page_count = {pages + 1}"))
    big = [NewItem("hf", f"org/{'x' * 90}{i}", SHA) for i in range(2000)]
    with pytest.raises(StoreError) as info:
        store.write(lambda db: enqueue(db, big, now=T0))
    message = str(info.value)
    assert "SQLITE_FULL" in message
    assert "free space" in message
    assert "nothing of this write was kept" in message
    with store.read() as db:
        assert [i.repo_id for i in list_items(db)] == ["keep/me"]  # the failed batch left no trace
    store.write(lambda db: db.execute("PRAGMA max_page_count = 1073741823"))
    assert sum(store.write(lambda db: enqueue(db, big, now=T0))) == 2000
    with store.read() as db:
        assert queue_counts(db)["pending"] == 2001


def test_times_are_fixed_width_utc() -> None:
    assert to_iso(T0) == "2026-11-01T12:00:00.000000Z"
    assert to_iso(datetime(2026, 11, 1, 13, 0, tzinfo=UTC).astimezone()) == "2026-11-01T13:00:00.000000Z"
    assert from_iso("2026-11-01T12:00:00.000Z") == T0
    assert from_iso(None) is None


# ------------------------------------------------------------------------------------------- queue


def test_enqueue_is_idempotent_per_commit(store: Store) -> None:
    assert add(store, NewItem("hf", "a/b", SHA), NewItem("hf", "a/b", SHA)) == [True, False]
    assert add(store, NewItem("hf", "a/b", SHA2, listed_by="modified")) == [True]
    assert add(store, NewItem("other", "a/b", SHA)) == [True]
    with store.read() as db:
        assert queue_counts(db) == {"pending": 3, "running": 0, "done": 0, "failed": 0, "dead": 0}
        assert {i.listed_by for i in list_items(db, repo_id="a/b", hub="hf")} == {"created", "modified"}


def test_claim_leases_due_items_in_order_and_excludes_paused_hubs(store: Store) -> None:
    add(store, NewItem("hf", "a/1", SHA), now=T0)
    add(store, NewItem("hf", "a/2", SHA), now=T0 + timedelta(seconds=1))
    add(store, NewItem("paused", "a/3", SHA), now=T0)
    add(store, NewItem("hf", "a/4", SHA), now=T0 + timedelta(hours=1))  # not due yet at T0+2s
    items = claim(store, now=T0 + timedelta(seconds=2), exclude=("paused",))
    assert [i.repo_id for i in items] == ["a/1", "a/2"]
    assert all(i.state == "running" and i.attempts == 1 and i.lease_owner == "w1" for i in items)
    assert items[0].lease_expires_at == T0 + timedelta(seconds=62)
    assert claim(store, owner="w2", now=T0 + timedelta(seconds=3), exclude=("paused",)) == []


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (first,) = claim(store, owner="crashed")
    assert claim(store, owner="w2", now=T0 + timedelta(seconds=30)) == []
    (again,) = claim(store, owner="w2", now=T0 + timedelta(seconds=61))
    assert (again.id, again.attempts, again.lease_owner) == (first.id, 2, "w2")
    outcome = ScanOutcome(hub="hf", repo_id="a/b", commit=SHA, url="u")
    with pytest.raises(LeaseLostError):
        store.write(lambda db: record_outcome(db, first, outcome, sinks=["log"], owner="crashed", now=T0))
    assert store.write(lambda db: renew_leases(db, [first.id], owner="crashed", lease_s=60, now=T0)) == [
        first.id
    ]
    assert store.write(lambda db: renew_leases(db, [first.id], owner="w2", lease_s=60, now=T0)) == []


def test_item_that_kills_its_worker_on_the_last_attempt_goes_dead(store: Store) -> None:
    add(store, NewItem("hf", "poison/pill", SHA))
    now = T0
    for _ in range(3):
        assert len(claim(store, owner="dies", now=now, max_attempts=3)) == 1
        now += timedelta(seconds=61)
    assert claim(store, owner="w", now=now, max_attempts=3) == []
    with store.read() as db:
        (item,) = list_items(db, state="dead")
    assert "worker died" in (item.last_error or "")
    assert item.attempts == 3


def test_fail_backs_off_then_dies_and_refunds_are_not_counted(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    state = store.write(
        lambda db: fail(
            db,
            item.id,
            owner="w1",
            error="TransientHubError: 503",
            max_attempts=3,
            retry_at=T0 + timedelta(seconds=30),
            now=T0,
        )
    )
    assert state == "failed"
    assert claim(store, now=T0 + timedelta(seconds=10)) == []
    (item,) = claim(store, now=T0 + timedelta(seconds=31))
    assert item.attempts == 2
    state = store.write(
        lambda db: fail(
            db,
            item.id,
            owner="w1",
            error="RateLimited",
            max_attempts=3,
            retry_at=T0 + timedelta(seconds=40),
            now=T0,
            refund_attempt=True,
        )
    )
    with store.read() as db:
        assert get_item(db, item.id).attempts == 1  # type: ignore[union-attr]
    (item,) = claim(store, now=T0 + timedelta(seconds=41))
    assert item.attempts == 2  # the refunded attempt was not counted
    store.write(lambda db: fail(db, item.id, owner="w1", error="x", max_attempts=3, retry_at=T0, now=T0))
    (item,) = claim(store, now=T0 + timedelta(seconds=42))
    state = store.write(
        lambda db: fail(db, item.id, owner="w1", error="final" * 1000, max_attempts=3, retry_at=T0, now=T0)
    )
    assert state == "dead"
    with store.read() as db:
        dead = get_item(db, item.id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.finished_at == T0
    assert len(dead.last_error or "") == 2000


def test_release_and_requeue(store: Store) -> None:
    add(store, NewItem("hf", "a/1", SHA), NewItem("hf", "a/2", SHA), NewItem("hf", "a/3", SHA))
    items = claim(store)
    assert store.write(lambda db: release(db, [items[0].id], owner="someone-else", now=T0)) == 0
    assert store.write(lambda db: release(db, [items[0].id], owner="w1", now=T0)) == 1
    for item in items[1:]:
        store.write(
            lambda db, item=item: fail(
                db, item.id, owner="w1", error="e", max_attempts=1, retry_at=T0, now=T0
            )
        )
    with store.read() as db:
        counts = queue_counts(db)
        assert (counts["pending"], counts["dead"]) == (1, 2)
        assert get_item(db, items[0].id).attempts == 0  # type: ignore[union-attr]
    assert sorted(store.write(lambda db: requeue(db, state="dead", now=T0))) == [items[1].id, items[2].id]
    running = claim(store, now=T0 + timedelta(seconds=1))
    assert store.write(lambda db: requeue(db, ids=[running[0].id], now=T0)) == []  # live lease: untouched
    with pytest.raises(ValueError, match="needs ids or a state"):
        store.write(lambda db: requeue(db, now=T0))


def test_complete_marks_done_with_a_note(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    store.write(
        lambda db: complete(
            db,
            item.id,
            owner="w1",
            outcome_json='{"notes": ["gated"]}',
            bytes_read=5,
            requests=1,
            now=T0,
            note="gated repo",
        )
    )
    with store.read() as db:
        done = get_item(db, item.id)
    assert done is not None
    assert (done.state, done.last_error, done.bytes_read, done.outcome()) == (
        "done",
        "gated repo",
        5,
        {"notes": ["gated"]},
    )
    assert done.to_dict()["finished_at"] == to_iso(T0)


# ------------------------------------------------------------------------------------------- cursors


def test_cursor_progress_and_errors(store: Store) -> None:
    store.write(
        lambda db: save_cursor(
            db, hub="hf", sort="created", high_water=T0, resume_after=None, resume_top=None, now=T0
        )
    )
    store.write(
        lambda db: record_cursor_error(db, hub="hf", sort="created", error="503", now=T0 + timedelta(1))
    )
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert (cursor.high_water, cursor.last_ok_at, cursor.last_error) == (T0, T0, "503")
    later = T0 + timedelta(days=2)
    store.write(
        lambda db: save_cursor(
            db, hub="hf", sort="created", high_water=later, resume_after=T0, resume_top=later, now=later
        )
    )
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
        assert get_cursor(db, "hf", "modified") is None
    assert cursor is not None
    assert (cursor.high_water, cursor.resume_after, cursor.last_error) == (later, T0, None)
    with pytest.raises(StoreError, match="CHECK constraint"):
        store.write(
            lambda db: save_cursor(
                db,
                hub="hf",
                sort="sideways",
                high_water=T0,  # type: ignore[arg-type]
                resume_after=None,
                resume_top=None,
                now=T0,
            )
        )


# ------------------------------------------------------------------------------------------- outcomes


def finding(protected: str, verdict: str, **kw: object) -> Finding:
    defaults: dict[str, object] = {
        "owner": "ip-team",
        "p_value": 1e-30,
        "log10_p": -30.0,
        "null": "independent",
        "transform": "identity",
        "matched": "64/64 rows",
        "severity": "high",
    }
    defaults.update(kw)
    return Finding(protected=protected, verdict=verdict, **defaults)  # type: ignore[arg-type]


def outcome(*findings: Finding, repo: str = "a/b", commit: str = SHA) -> ScanOutcome:
    return ScanOutcome(
        hub="hf",
        repo_id=repo,
        commit=commit,
        url=f"http://hub/{repo}/tree/{commit}",
        weight_files=("model.safetensors",),
        weight_format="safetensors",
        bytes_read=1234,
        requests=3,
        findings=findings,
        reproduce="hubsentry compare x y",
    )


def test_record_outcome_writes_results_alerts_and_outbox_in_one_transaction(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    result = outcome(
        finding("guard", "derived"),
        finding("other", "inconclusive", p_value=1e-4, log10_p=-4.0),
        finding("third", "independent", p_value=0.5, log10_p=math.log10(0.5)),
    )
    recorded = store.write(
        lambda db: record_outcome(db, item, result, sinks=["slack:#ip", "log"], owner="w1", now=T0)
    )
    key = alert_key(protected="guard", hub="hf", repo_id="a/b", commit=SHA)
    assert recorded.new_alerts == (key,)
    with store.read() as db:
        done = get_item(db, item.id)
        assert done is not None
        assert (done.state, done.bytes_read, done.requests) == ("done", 1234, 3)
        assert len(list_scan_results(db, repo_id="a/b")) == 3
        (alert,) = list_alerts(db)
        assert (alert["alert_key"], alert["seq"], alert["state"], alert["owner"]) == (
            key,
            1,
            "new",
            "ip-team",
        )
        evidence = json.loads(alert["evidence_json"])
        assert evidence["finding"]["matched"] == "64/64 rows"
        assert (evidence["url"], evidence["bytes_read"], evidence["algo"]) == (result.url, 1234, result.algo)
        outbox = list(db.query("SELECT sink, state FROM outbox ORDER BY sink"))
        assert outbox == [{"sink": "log", "state": "pending"}, {"sink": "slack:#ip", "state": "pending"}]


def test_rescan_never_creates_a_second_alert(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    store.write(
        lambda db: record_outcome(
            db, item, outcome(finding("guard", "derived")), sinks=["log"], owner="w1", now=T0
        )
    )
    store.write(lambda db: requeue(db, ids=[item.id], now=T0))
    (again,) = claim(store, now=T0 + timedelta(seconds=1))
    recorded = store.write(
        lambda db: record_outcome(
            db, again, outcome(finding("guard", "derived")), sinks=["log", "slack:#new"], owner="w1", now=T0
        )
    )
    assert recorded.new_alerts == ()
    assert len(recorded.known_alerts) == 1
    with store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def test_min_verdict_inconclusive_alerts_on_both_and_seq_is_monotonic(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA), NewItem("hf", "c/d", SHA))
    first, second = claim(store)
    store.write(
        lambda db: record_outcome(
            db,
            first,
            outcome(finding("p1", "inconclusive")),
            sinks=["log"],
            owner="w1",
            now=T0,
            min_verdict="inconclusive",
        )
    )
    store.write(
        lambda db: record_outcome(
            db,
            second,
            outcome(finding("p1", "derived"), finding("p2", "derived"), repo="c/d"),
            sinks=["log"],
            owner="w1",
            now=T0,
            min_verdict="inconclusive",
        )
    )
    with store.read() as db:
        assert [a["seq"] for a in list_alerts(db)] == [3, 2, 1]


def test_lost_lease_or_wrong_outcome_writes_nothing(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    with pytest.raises(ValueError, match="does not match work item"):
        store.write(
            lambda db: record_outcome(
                db, item, outcome(finding("g", "derived"), commit=SHA2), sinks=["log"], owner="w1", now=T0
            )
        )
    with pytest.raises(LeaseLostError):
        store.write(
            lambda db: record_outcome(
                db, item, outcome(finding("g", "derived")), sinks=["log"], owner="intruder", now=T0
            )
        )
    with store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM scan_results").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
        assert get_item(db, item.id).state == "running"  # type: ignore[union-attr]


def test_non_finite_numbers_are_stored_as_null_and_strict_json(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    weird = finding(
        "g", "derived", p_value=float("nan"), log10_p=float("-inf"), tests=({"stat": float("inf")},)
    )
    store.write(lambda db: record_outcome(db, item, outcome(weird), sinks=[], owner="w1", now=T0))
    with store.read() as db:
        (alert,) = list_alerts(db)
        assert alert["p_value"] is None
        assert alert["log10_p"] is None
        assert json.loads(alert["evidence_json"])["finding"]["tests"] == [{"stat": None}]


# ------------------------------------------------------------------------------------------- alerts


def test_alert_triage(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA))
    (item,) = claim(store)
    store.write(
        lambda db: record_outcome(
            db, item, outcome(finding("guard", "derived")), sinks=["log"], owner="w1", now=T0
        )
    )
    with store.read() as db:
        key = list_alerts(db)[0]["alert_key"]
        assert resolve_key(db, key[:8].upper()) == key
        for bad in ("abc", "zzzzzzzz", "0" * 10):
            with pytest.raises(AlertNotFoundError):
                resolve_key(db, bad)
    assert store.write(lambda db: ack_alert(db, key, now=T0)) is True
    assert store.write(lambda db: ack_alert(db, key, now=T0)) is False
    with pytest.raises(ValueError, match="needs a reason"):
        store.write(lambda db: resolve_alert(db, key, resolution="false-positive", reason=" ", now=T0))
    with pytest.raises(ValueError, match="resolution must be"):
        store.write(lambda db: resolve_alert(db, key, resolution="maybe", reason="x", now=T0))  # type: ignore[arg-type]
    store.write(
        lambda db: resolve_alert(db, key, resolution="true-positive", reason="confirmed copy", now=T0)
    )
    with pytest.raises(AlertNotFoundError):
        store.write(lambda db: ack_alert(db, "f" * 64, now=T0))
    with store.read() as db:
        row = list_alerts(db, state="resolved")[0]
        assert (row["resolution"], row["resolution_reason"]) == ("true-positive", "confirmed copy")
        assert alert_counts(db) == {"new": 0, "acked": 0, "resolved": 1}


# ------------------------------------------------------------------------------------------- registry rows


def model(name: str, *files: ProtectedFile) -> ProtectedModel:
    return ProtectedModel(
        name=name,
        owner="ip",
        source="/models/x",
        source_commit=None,
        algo="v1",
        arch_json="{}",
        signature_json='{"k": 1}',
        reference_path=None,
        reference_sha256=None,
        created_at=T0,
        files=files,
    )


def test_protected_models_and_files(store: Store) -> None:
    store.write(
        lambda db: add_protected(
            db,
            model(
                "guard",
                ProtectedFile("model.safetensors", 10, "ab" * 32),
                ProtectedFile("config.json", 2, None),
            ),
        )
    )
    with pytest.raises(ProtectedExistsError):
        store.write(lambda db: add_protected(db, model("guard")))
    store.write(lambda db: add_protected(db, model("other", ProtectedFile("w.gguf", 5, "cd" * 32))))
    with store.read() as db:
        assert [m.name for m in list_protected(db)] == ["guard", "other"]
        got = get_protected(db, "guard")
        assert got is not None
        assert [f.path for f in got.files] == ["config.json", "model.safetensors"]
        assert find_files_by_sha256(db, ["AB" * 32, "ee" * 32]) == [("guard", "model.safetensors", "ab" * 32)]
    assert store.write(lambda db: remove_protected(db, "guard")) is True
    assert store.write(lambda db: remove_protected(db, "guard")) is False
    with store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM protected_files").fetchone()[0] == 1  # cascade
    store.write(lambda db: add_protected(db, model("other"), replace=True))
    with store.read() as db:
        assert get_protected(db, "other").files == ()  # type: ignore[union-attr]


def test_collect_status(store: Store) -> None:
    add(store, NewItem("hf", "a/b", SHA), NewItem("hf", "c/d", SHA))
    items = claim(store)
    store.write(
        lambda db: fail(db, items[0].id, owner="w1", error="boom", max_attempts=1, retry_at=T0, now=T0)
    )
    store.write(
        lambda db: save_cursor(
            db, hub="hf", sort="created", high_water=T0, resume_after=None, resume_top=None, now=T0
        )
    )
    with store.read() as db:
        status = collect_status(db)
    assert status["queue"]["counts"]["dead"] == 1
    assert status["dead"][0]["last_error"] == "boom"
    assert status["cursors"][0]["high_water"] == to_iso(T0)
    json.dumps(status)
