"""The worker on a real store, over threads and an in-process Dask cluster: outcomes, errors, leases, stops.

The processor is a small real function whose behaviour is chosen by the repo's organisation name, so the
same function (picklable by reference) runs on both executors.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import ExecutorConfig
from monitor.errors import (
    BudgetExceeded,
    CommitMoved,
    FormatError,
    GatedRepo,
    NotFound,
    RateLimited,
    StoreError,
    TransientHubError,
    UnsupportedFormat,
)
from monitor.executor import ExecutorHandle, build_executor
from monitor.findings import Finding, ScanOutcome
from monitor.hubs.huggingface import HuggingFaceSource
from monitor.localhub import LocalHub, write_repo
from monitor.store import (
    NewItem,
    Store,
    WorkItem,
    claim_due,
    enqueue,
    get_item,
    list_alerts,
    list_items,
    requeue,
)
from monitor.worker import RetryPolicy, Worker

SHA = "c" * 40
OLD = "0" * 40


def outcome_for(item: WorkItem, *findings: Finding, commit: str | None = None) -> ScanOutcome:
    return ScanOutcome(
        hub=item.hub,
        repo_id=item.repo_id,
        commit=commit or item.commit_sha,
        url=f"http://hub/{item.repo_id}",
        bytes_read=100,
        requests=2,
        elapsed_s=0.01,
        findings=findings,
    )


def process(item: WorkItem) -> ScanOutcome:
    """Behaviour by organisation: ``ok/…``, ``copy/…``, ``transient/…``, ``slow/<seconds>`` ..."""
    kind, _, name = item.repo_id.partition("/")
    errors: dict[str, BaseException] = {
        "transient": TransientHubError("hub answered 503"),
        "ratelimited": RateLimited("hub answered 429", retry_after_s=120),
        "gone": NotFound("repo deleted"),
        "gated": GatedRepo("401 on resolve"),
        "badfmt": FormatError("header length points past the end of the file"),
        "pickle": UnsupportedFormat("pytorch_model.bin is a pickle; not read"),
        "budget": BudgetExceeded("needs 80 MiB", budget=64, requested=80),
        "store": StoreError("database or disk is full"),
        "bug": KeyError("unexpected"),
    }
    if kind in errors:
        raise errors[kind]
    if kind == "slow":
        time.sleep(float(name))
    if kind == "moved" and item.commit_sha == OLD:
        raise CommitMoved(f"X-Repo-Commit is not {OLD}")
    if kind == "wrongcommit":
        return outcome_for(item, commit="d" * 40)
    if kind == "copy":
        return outcome_for(
            item,
            Finding(
                protected="guard",
                owner="ip",
                verdict="derived",
                p_value=1e-40,
                log10_p=-40.0,
                null="independent init",
                transform="identity",
                matched="64/64",
            ),
        )
    return outcome_for(item)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "h.db") as opened:
        yield opened


@pytest.fixture(params=["threads", "dask"])
def executor(request: pytest.FixtureRequest) -> Iterator[ExecutorHandle]:
    with build_executor(ExecutorConfig(kind=request.param, workers=2)) as handle:
        yield handle


@pytest.fixture
def threads() -> Iterator[ExecutorHandle]:
    with build_executor(ExecutorConfig(kind="threads", workers=2)) as handle:
        yield handle


def make_worker(store: Store, executor: ExecutorHandle, **kw: object) -> Worker:
    options: dict[str, object] = {
        "retry": RetryPolicy(3, 30.0, 3600.0),
        "sinks": ("log",),
        "rng": random.Random(7),
        "max_in_flight": 4,
    }
    options.update(kw)
    return Worker(store, options.pop("processor", process), executor.executor, **options)  # type: ignore[arg-type]


def add(store: Store, *repos: str, hub: str = "hf", commit: str = SHA) -> None:
    now = datetime.now(UTC)
    store.write(lambda db: enqueue(db, [NewItem(hub, repo, commit) for repo in repos], now=now))


def items(store: Store) -> dict[str, WorkItem]:
    with store.read() as db:
        return {i.repo_id: i for i in list_items(db, limit=1000)}


def test_outcomes_and_error_classes(
    store: Store, executor: ExecutorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    repos = [
        "ok/a",
        "copy/b",
        "transient/c",
        "ratelimited/d",
        "gone/e",
        "gated/f",
        "badfmt/g",
        "pickle/h",
        "budget/i",
        "bug/j",
        "wrongcommit/k",
        "store/l",
    ]
    add(store, *(r for r in repos if r != "ratelimited/d"))
    add(store, "ratelimited/d", hub="limited")  # a rate limit pauses its whole hub
    seen: list[str] = []
    started = datetime.now(UTC)
    with caplog.at_level(logging.INFO):
        report = make_worker(store, executor, on_scan=lambda o: seen.append(o.repo_id)).drain()
    got = items(store)
    assert {r: got[r].state for r in repos} == {
        "ok/a": "done",
        "copy/b": "done",
        "gone/e": "done",
        "gated/f": "done",
        "badfmt/g": "done",
        "pickle/h": "done",
        "budget/i": "done",
        "transient/c": "failed",
        "ratelimited/d": "failed",
        "bug/j": "failed",
        "wrongcommit/k": "failed",
        "store/l": "failed",
    }
    assert (report.claimed, report.done, report.noted, report.retried, report.dead) == (12, 7, 5, 5, 0)
    assert sorted(seen) == ["copy/b", "ok/a"]
    assert got["ok/a"].last_error is None
    assert got["ok/a"].bytes_read == 100
    assert "no longer exists" in (got["gone/e"].last_error or "")
    assert "gated" in (got["gated/f"].last_error or "")
    assert "UnsupportedFormat" in (got["pickle/h"].last_error or "")
    assert "byte budget" in (got["budget/i"].last_error or "")
    assert got["gone/e"].outcome()["notes"] == [got["gone/e"].last_error]  # type: ignore[index]
    assert (got["transient/c"].attempts, got["ratelimited/d"].attempts, got["store/l"].attempts) == (1, 0, 0)
    assert got["ratelimited/d"].next_attempt_at >= started + timedelta(seconds=120)
    assert (
        started + timedelta(seconds=15)
        <= got["transient/c"].next_attempt_at
        <= started + timedelta(seconds=60)
    )
    assert "KeyError" in (got["bug/j"].last_error or "")
    assert "does not match work item" in (got["wrongcommit/k"].last_error or "")
    with store.read() as db:
        (alert,) = list_alerts(db)
        assert alert["repo_id"] == "copy/b"
        assert db.execute("SELECT sink FROM outbox").fetchall() == [("log",)]
    assert report.new_alerts == [alert["alert_key"]]
    assert (
        "hf:transient/c@cccccccccccc: attempt 1/3 failed: TransientHubError: hub answered 503" in caplog.text
    )


def test_a_rate_limited_hub_is_paused_while_other_hubs_go_on(store: Store, threads: ExecutorHandle) -> None:
    add(store, "ratelimited/first", "ok/second", hub="slow-hub")
    add(store, "ok/third", hub="other-hub")
    report = make_worker(store, threads, max_in_flight=1).drain()
    got = items(store)
    assert (got["ratelimited/first"].state, got["ok/second"].state, got["ok/third"].state) == (
        "failed",
        "pending",
        "done",
    )
    assert report.claimed == 2


def test_dead_after_max_attempts_then_requeued(
    store: Store, executor: ExecutorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    add(store, "bug/always", "ok/fine")
    worker = make_worker(store, executor, retry=RetryPolicy(3, 0.001, 0.002))
    reports = []
    for _ in range(10):  # each drain takes what is due now; the retries become due within milliseconds
        reports.append(worker.drain())
        if items(store)["bug/always"].state == "dead":
            break
        time.sleep(0.01)
    got = items(store)
    assert (got["bug/always"].state, got["bug/always"].attempts, got["ok/fine"].state) == ("dead", 3, "done")
    assert (sum(r.dead for r in reports), sum(r.retried for r in reports)) == (1, 2)
    assert "giving up after 3 attempts" in caplog.text
    assert f"hubsentry queue requeue {got['bug/always'].id}" in caplog.text
    now = datetime.now(UTC)
    assert store.write(lambda db: requeue(db, state="dead", now=now)) == [got["bug/always"].id]
    assert items(store)["bug/always"].state == "pending"


def test_commit_moved_is_done_and_the_new_head_is_enqueued(
    store: Store, threads: ExecutorHandle, tmp_path: Path
) -> None:
    root = tmp_path / "hub"
    write_repo(root, "moved/model", {"config.json": {"v": 2}})
    with LocalHub(root) as hub:
        source = HuggingFaceSource("hf", hub.endpoint, None)
        head = source.snapshot("moved/model").commit
        add(store, "moved/model", commit=OLD)
        report = make_worker(store, threads, hubs={"hf": source}).drain()
    with store.read() as db:
        rows = {i.commit_sha: i for i in list_items(db, repo_id="moved/model")}
    assert set(rows) == {OLD, head}
    assert rows[OLD].state == "done"
    assert "moved to a new commit" in (rows[OLD].last_error or "")
    assert rows[OLD].outcome()["url"].endswith(f"/moved/model/tree/{OLD}")  # type: ignore[index]
    assert (rows[head].state, rows[head].listed_by) == ("done", "commit-moved")
    assert report.done == 2


def test_a_scan_past_its_timeout_is_abandoned_and_its_late_result_ignored(
    store: Store, threads: ExecutorHandle
) -> None:
    add(store, "slow/1.2", "ok/quick")
    report = make_worker(store, threads, item_timeout_s=0.3).drain()
    assert (report.timed_out, report.retried) == (1, 1)
    time.sleep(1.2)  # let the abandoned scan finish
    got = items(store)
    assert got["slow/1.2"].state == "failed"
    assert "did not finish within" in (got["slow/1.2"].last_error or "")
    assert got["ok/quick"].state == "done"


def test_stop_gives_unstarted_items_back_and_lets_running_ones_finish(store: Store, tmp_path: Path) -> None:
    add(store, "slow/0.6", "slow/0.61", "slow/0.62", "slow/0.63")
    stop = threading.Event()
    with build_executor(ExecutorConfig(kind="threads", workers=1)) as one:
        threading.Timer(0.2, stop.set).start()
        report = make_worker(store, one, max_in_flight=4).drain(stop=stop)
    got = items(store)
    states = sorted(i.state for i in got.values())
    assert states == ["done", "pending", "pending", "pending"]
    assert report.released == 3
    assert all(i.attempts == 0 for i in got.values() if i.state == "pending")


def test_a_crashed_workers_item_is_reclaimed_after_its_lease(store: Store, executor: ExecutorHandle) -> None:
    add(store, "ok/orphan")
    now = datetime.now(UTC)
    (claimed,) = store.write(
        lambda db: claim_due(db, owner="ghost", limit=1, lease_s=0.2, max_attempts=3, now=now)
    )
    assert make_worker(store, executor).drain().claimed == 0  # lease still valid
    time.sleep(0.25)
    report = make_worker(store, executor).drain()
    assert report.done == 1
    with store.read() as db:
        item = get_item(db, claimed.id)
    assert item is not None
    assert (item.state, item.attempts) == ("done", 2)


_CLAIM_AND_DIE = """
import os, sys
from datetime import UTC, datetime
from monitor.store import Store, claim_due
from monitor.worker import default_owner
with Store(sys.argv[1]) as store:
    owner = default_owner()
    now = datetime.now(UTC)
    store.write(lambda db: claim_due(db, owner=owner, limit=1, lease_s=3600, max_attempts=3, now=now))
    print(owner, flush=True)
    if sys.argv[2] == "die":
        os._exit(0)  # no release, no cleanup: as after a kill -9
    sys.stdin.read()  # hold the lease until the test closes stdin
"""


def test_a_dead_processs_leases_are_reclaimed_at_once_a_live_ones_are_not(
    store: Store, threads: ExecutorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker on this host whose process is gone loses its hour-long lease at the next drain; a worker
    whose process still runs keeps it (its item is not scanned twice)."""
    add(store, "ok/orphan")
    dead = subprocess.run(
        [sys.executable, "-c", _CLAIM_AND_DIE, str(store.path), "die"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_owner = dead.stdout.strip()
    assert items(store)["ok/orphan"].lease_owner == dead_owner
    add(store, "ok/held")
    holder = subprocess.Popen(
        [sys.executable, "-c", _CLAIM_AND_DIE, str(store.path), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        live_owner = holder.stdout.readline().strip()
        assert items(store)["ok/held"].lease_owner == live_owner
        caplog.set_level(logging.WARNING, logger="monitor.worker")
        report = make_worker(store, threads).drain()
        got = items(store)
        assert (got["ok/orphan"].state, got["ok/orphan"].attempts) == ("done", 2)
        assert (got["ok/held"].state, got["ok/held"].lease_owner) == ("running", live_owner)
        assert report.claimed == 1
        assert f"were held by {dead_owner}, which is no longer running" in caplog.text
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_next_due_follows_retries_leases_and_hub_pauses(store: Store, threads: ExecutorHandle) -> None:
    worker = make_worker(store, threads)
    assert worker.next_due() is None
    add(store, "ratelimited/first", hub="limited")  # fails with retry_after 120 s: the hub is paused
    worker.drain()
    paused_until = worker.next_due()
    assert paused_until is not None
    assert 110 < (paused_until - datetime.now(UTC)).total_seconds() <= 121
    add(store, "ok/other", hub="hf")
    now = datetime.now(UTC)
    (held,) = store.write(
        lambda db: claim_due(db, owner="ghost", limit=1, lease_s=5, max_attempts=3, now=now)
    )
    assert held.repo_id == "ok/other"
    due = worker.next_due()  # the other hub's item is held by a (fake) owner whose lease ends in 5 s
    assert due is not None
    assert 3 < (due - now).total_seconds() <= 5


def test_leases_are_renewed_while_a_scan_runs(store: Store, threads: ExecutorHandle) -> None:
    add(store, "slow/1.0")
    stolen: list[int] = []

    def thief() -> None:
        time.sleep(0.7)  # past the 0.3 s lease, had it not been renewed
        now = datetime.now(UTC)
        stolen.extend(
            i.id
            for i in store.write(
                lambda db: claim_due(db, owner="thief", limit=5, lease_s=10, max_attempts=3, now=now)
            )
        )

    other = threading.Thread(target=thief)
    other.start()
    report = make_worker(store, threads, lease_s=0.3).drain()
    other.join()
    assert (stolen, report.lost, report.done) == ([], 0, 1)


def test_an_unpicklable_processor_gives_its_items_back_on_dask(store: Store, tmp_path: Path) -> None:
    lock = threading.Lock()

    def closure(item: WorkItem) -> ScanOutcome:
        with lock:
            return outcome_for(item)

    add(store, "ok/1", "ok/2")
    with build_executor(ExecutorConfig(kind="dask", workers=1)) as dask:
        report = make_worker(store, dask, processor=closure).drain()
    assert (report.claimed, report.released) == (2, 2)
    assert {i.state for i in items(store).values()} == {"pending"}
    assert {i.attempts for i in items(store).values()} == {0}
