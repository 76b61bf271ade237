"""The scanner against a real local hub (LocalHub) through the real HuggingFaceSource client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.hubs.base import RepoEvent, RepoSnapshot, SortKey
from monitor.hubs.huggingface import HuggingFaceSource
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.remote.retry import RetryPolicy
from monitor.remote.source import FileSet
from monitor.remote.transport import HttpSettings
from monitor.scanner import ScanPolicy, event_time, poll_hub, poll_pass
from monitor.store import Store, get_cursor, list_items

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
POLICY = ScanPolicy(overlap_s=900, max_repos_per_cycle=100, initial_lookback_s=86400)
FAST = HttpSettings(retry=RetryPolicy(max_attempts=2, base_delay_s=0, max_delay_s=0, max_wait_s=0.5))


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def put(
    root: Path,
    repo: str,
    *,
    created: datetime,
    modified: datetime | None = None,
    content: str = "v1",
    **sidecar: object,
) -> None:
    write_repo(
        root,
        repo,
        {"config.json": {"content": content}},
        sidecar={"createdAt": iso(created), "lastModified": iso(modified or created), **sidecar},
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    return path


@pytest.fixture
def hub(root: Path) -> Iterator[LocalHub]:
    with LocalHub(root, page_size=2) as served:
        yield served


@pytest.fixture
def source(hub: LocalHub) -> HuggingFaceSource:
    return HuggingFaceSource("hf", hub.endpoint, None, http=FAST)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "h.db") as opened:
        yield opened


def queued(store: Store) -> set[tuple[str, str]]:
    with store.read() as db:
        return {(i.repo_id, i.listed_by) for i in list_items(db, limit=10_000)}


def commits(store: Store, repo: str) -> set[str]:
    with store.read() as db:
        return {i.commit_sha for i in list_items(db, repo_id=repo)}


def test_new_repos_are_enqueued_once_and_the_cursor_moves(
    root: Path, hub: LocalHub, source: HuggingFaceSource, store: Store
) -> None:
    for minutes, name in ((50, "a/one"), (40, "a/two"), (30, "a/three")):
        put(root, name, created=ago(minutes))
    put(root, "old/repo", created=NOW - timedelta(days=3))  # before the first walk's lookback
    created, modified = poll_hub(store, source, policy=POLICY, now=NOW)
    assert (created.enqueued, created.known, created.complete, created.ok) == (3, 0, True, True)
    assert (modified.enqueued, modified.known) == (0, 3)
    assert queued(store) == {("a/one", "created"), ("a/two", "created"), ("a/three", "created")}
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert (cursor.high_water, cursor.last_ok_at, cursor.resume_after) == (ago(30), NOW, None)

    hub.clear_log()
    again = poll_pass(store, source, sort="created", policy=POLICY, now=NOW + timedelta(minutes=5))
    assert (again.enqueued, again.known, again.seen, again.complete) == (0, 2, 2, True)  # only the overlap
    assert len([r for r in hub.log if r.path == "/api/models"]) <= 2


def test_a_new_commit_of_a_known_repo_is_scanned_again(
    root: Path, source: HuggingFaceSource, store: Store
) -> None:
    put(root, "a/model", created=ago(120))
    put(root, "a/newer", created=ago(30))  # moves the created cursor above a/model's overlap window
    poll_hub(store, source, policy=POLICY, now=NOW)
    (first,) = commits(store, "a/model")
    put(root, "a/model", created=ago(120), modified=ago(2), content="v2")
    created, modified = poll_hub(store, source, policy=POLICY, now=NOW + timedelta(minutes=1))
    assert (created.enqueued, modified.enqueued) == (0, 1)
    assert len(commits(store, "a/model") - {first}) == 1
    assert ("a/model", "modified") in queued(store)


def test_a_repo_made_public_late_is_found_by_the_modified_pass(
    root: Path, source: HuggingFaceSource, store: Store
) -> None:
    legacy = datetime(2022, 3, 2, 23, 29, 4, tzinfo=UTC)  # the Hub's stand-in createdAt of old repos
    put(root, "late/public", created=legacy, modified=ago(600), private=True)
    put(root, "a/visible", created=ago(30))
    poll_hub(store, source, policy=POLICY, now=NOW)
    assert queued(store) == {("a/visible", "created")}  # private: not listed
    put(root, "late/public", created=legacy, modified=ago(1), private=False)
    created, modified = poll_hub(store, source, policy=POLICY, now=NOW + timedelta(minutes=1))
    assert (created.enqueued, modified.enqueued) == (0, 1)
    assert ("late/public", "modified") in queued(store)


def test_a_restart_between_scans_resends_nothing_and_misses_nothing(
    root: Path, hub: LocalHub, tmp_path: Path
) -> None:
    for minutes, name in ((50, "a/one"), (40, "a/two"), (30, "a/three")):
        put(root, name, created=ago(minutes))
    with Store(tmp_path / "r.db") as first:
        poll_hub(first, HuggingFaceSource("hf", hub.endpoint, None, http=FAST), policy=POLICY, now=NOW)
    put(root, "b/new", created=ago(-4))  # created after the first scan
    put(root, "b/late-indexed", created=ago(35))  # older than the cursor, inside the overlap window
    with Store(tmp_path / "r.db") as second:  # a new process: fresh store, fresh client
        created, modified = poll_hub(
            second,
            HuggingFaceSource("hf", hub.endpoint, None, http=FAST),
            policy=POLICY,
            now=NOW + timedelta(minutes=5),
        )
        assert (created.enqueued, modified.enqueued) == (2, 0)
        assert {name for name, _ in queued(second)} == {
            "a/one",
            "a/two",
            "a/three",
            "b/new",
            "b/late-indexed",
        }
        with second.read() as db:
            assert len(list_items(db)) == 5


def test_a_listing_error_keeps_the_cursor_and_the_next_cycle_catches_up(
    root: Path, hub: LocalHub, source: HuggingFaceSource, store: Store
) -> None:
    put(root, "a/base", created=ago(100))
    poll_pass(store, source, sort="created", policy=POLICY, now=NOW)
    for minutes in (50, 40, 30, 20):
        put(root, f"b/r{minutes}", created=ago(minutes))
    hub.faults.add(
        FaultRule(
            "GET", r"^/api/models$", FaultAction.status(503, headers={"Retry-After": "1"}), skip=1, times=1
        )
    )  # the second page fails, longer than a call may wait
    failed = poll_pass(store, source, sort="created", policy=POLICY, now=NOW)
    assert failed.error is not None
    assert "503" in failed.error
    assert failed.enqueued == 2  # the first page's repos are kept
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert cursor.high_water == ago(100)  # unchanged
    assert "503" in (cursor.last_error or "")
    time.sleep(1.1)  # the hub asked for one second
    fixed = poll_pass(store, source, sort="created", policy=POLICY, now=NOW + timedelta(minutes=1))
    assert (fixed.error, fixed.enqueued, fixed.known, fixed.complete) == (
        None,
        2,
        3,
        True,
    )  # 3: page 1 + overlap
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert (cursor.high_water, cursor.last_error) == (ago(20), None)
    assert {n for n, _ in queued(store)} == {"a/base", "b/r50", "b/r40", "b/r30", "b/r20"}


class ShaLessListing:
    """A hub whose listings carry no commit (some mirrors): the scanner must resolve each head itself.

    Wraps the real client; only `list_changes` drops the ``sha`` field.
    """

    def __init__(self, inner: HuggingFaceSource) -> None:
        self.inner, self.name, self.endpoint = inner, inner.name, inner.endpoint

    def list_changes(self, *, sort: SortKey, limit: int | None = None) -> Iterator[RepoEvent]:
        for event in self.inner.list_changes(sort=sort, limit=limit):
            yield RepoEvent(event.hub, event.repo_id, None, event.created_at, event.last_modified)

    def snapshot(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        return self.inner.snapshot(repo_id, revision)

    def open_files(self, snapshot: RepoSnapshot, *, budget: int | None) -> FileSet:
        return self.inner.open_files(snapshot, budget=budget)

    def commit_url(self, repo_id: str, commit: str) -> str:
        return self.inner.commit_url(repo_id, commit)


def test_failed_lookups_are_retried_next_cycle_and_deleted_repos_skipped(
    root: Path, hub: LocalHub, source: HuggingFaceSource, store: Store
) -> None:
    for minutes, name in ((50, "a/one"), (40, "a/flaky"), (35, "a/deleted"), (30, "a/three")):
        put(root, name, created=ago(minutes))
    gone = FaultRule(
        "GET",
        r"^/api/models/a/deleted",
        FaultAction.status(
            404, headers={"X-Error-Code": "RepoNotFound"}, body={"error": "Repository not found"}
        ),
    )
    hub.faults.add(gone)
    hub.faults.add(FaultRule("GET", r"^/api/models/a/flaky", FaultAction.status(500)))
    shaless = ShaLessListing(source)
    report = poll_pass(store, shaless, sort="created", policy=POLICY, now=NOW)
    assert (report.enqueued, report.resolved, report.gone, report.complete) == (2, 2, 1, True)
    assert len(report.item_errors) == 1
    assert "a/flaky" in report.item_errors[0]
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert ago(45) < cursor.high_water < ago(40)  # stops just below the failed look-up  # type: ignore[operator]
    assert "a/flaky" in (cursor.last_error or "")
    hub.faults.clear()
    hub.faults.add(gone)
    retry = poll_pass(store, shaless, sort="created", policy=POLICY, now=NOW + timedelta(minutes=1))
    assert (retry.enqueued, retry.item_errors, retry.gone) == (1, [], 1)
    assert {n for n, _ in queued(store)} == {"a/one", "a/flaky", "a/three"}
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert (cursor.high_water, cursor.last_error) == (ago(30), None)


def test_max_repos_per_cycle_resumes_below_the_covered_band(
    root: Path, source: HuggingFaceSource, store: Store
) -> None:
    policy = ScanPolicy(overlap_s=300, max_repos_per_cycle=3, initial_lookback_s=86400)
    for minutes in (10, 20, 30, 40, 50, 60, 70):
        put(root, f"r/m{minutes}", created=ago(minutes))
    first = poll_pass(store, source, sort="created", policy=policy, now=NOW)
    assert (first.enqueued, first.complete) == (3, False)
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert (cursor.high_water, cursor.resume_after, cursor.resume_top) == (
        NOW - timedelta(days=1),
        ago(30),
        ago(10),
    )
    put(root, "r/newest", created=ago(1))
    second = poll_pass(store, source, sort="created", policy=policy, now=NOW)
    assert (second.enqueued, second.known, second.skipped, second.complete) == (3, 2, 1, False)
    third = poll_pass(store, source, sort="created", policy=policy, now=NOW)
    assert (third.enqueued, third.complete) == (2, True)
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
        assert len(list_items(db)) == 8
    assert cursor is not None
    assert (cursor.high_water, cursor.resume_after, cursor.resume_top) == (ago(1), None, None)
    assert {n for n, _ in queued(store)} == {f"r/m{m}" for m in (10, 20, 30, 40, 50, 60, 70)} | {"r/newest"}


def test_a_future_timestamp_cannot_blind_the_scanner(
    root: Path, source: HuggingFaceSource, store: Store
) -> None:
    put(root, "bad/clock", created=NOW + timedelta(days=365))
    poll_pass(store, source, sort="created", policy=POLICY, now=NOW)
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert cursor.high_water == NOW
    put(root, "a/next", created=NOW + timedelta(seconds=30))
    report = poll_pass(store, source, sort="created", policy=POLICY, now=NOW + timedelta(minutes=1))
    assert report.enqueued == 1


def test_stop_event_ends_the_walk_and_keeps_the_cursor(
    root: Path, source: HuggingFaceSource, store: Store
) -> None:
    put(root, "a/one", created=ago(10))
    stop = threading.Event()
    stop.set()
    assert poll_hub(store, source, policy=POLICY, now=NOW, stop=stop) == []
    report = poll_pass(store, source, sort="created", policy=POLICY, now=NOW, stop=stop)
    assert (report.stopped, report.enqueued, report.complete) == (True, 0, False)
    with store.read() as db:
        cursor = get_cursor(db, "hf", "created")
    assert cursor is not None
    assert cursor.high_water == NOW - timedelta(days=1)


def test_event_time_is_utc() -> None:
    naive = RepoEvent("h", "a/b", None, datetime(2026, 1, 1, 12), None)
    assert event_time(naive, "created") == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert event_time(naive, "modified") is None
