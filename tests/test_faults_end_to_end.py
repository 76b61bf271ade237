"""Hub and Slack faults through the whole daemon code path: each bad repo is handled, the others complete.

One hub holds healthy uploads next to uploads that meet every fault a hub can produce — 500s,
connection resets, timeouts, truncated bodies, a wrong ``Content-Range``, a repo deleted between listing
and reading, a commit that moves while it is read, a corrupt safetensors header, a missing shard, a 429
with ``RateLimit`` and ``Retry-After`` headers, and one repo that always fails. Cycles run in this process
(`run_cycle`, what ``hubsentry scan`` runs, with one set of services so the request budget spans every
cycle); the operator commands run as real ``hubsentry`` subprocesses. Checked: what each fault leads to
(retried, done with a note, or dead and re-queueable), that every log line about a failure names the
repo and the reason, that the request budget is never exceeded, and that Slack failures (429, a hanging
Slack, invalid channel, revoked token, an hour-long ``Retry-After``) lose nothing and never hold up
scanning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_crash_safety import (
    CHANNEL,
    CONFIG,
    FP_SECRET,
    HF_TOKEN,
    SLACK_TOKEN,
    Daemon,
    Template,
    build_template,
    copy_database,
    daemon_env,
    model_state,
    progress,
    publish,
    read_db,
    running,
    tiny_vocab,
    wait_until,
    write_config,
)

from monitor.alerts.delivery import requeue_dead
from monitor.config import load_config
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.localslack import LocalSlack
from monitor.scheduler import Services, alert_sinks, build_hub, build_services, pipeline_processor, run_cycle
from monitor.store import Store, from_iso
from monitor.synth.export import save_hf_repo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

API_CEILING = 400
RESOLVER_CEILING = 400


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("protected"))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "HF_TOKEN": HF_TOKEN,
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "HUBSENTRY_SECRET": FP_SECRET,
    }.items():
        monkeypatch.setenv(key, value)


def lfs_sha256(hub: LocalHub, repo_id: str, path: str = "model.safetensors") -> str:
    repo = hub.index.repo(repo_id)
    assert repo is not None
    digest = repo.files[path].sha256
    assert digest is not None
    return digest


def corrupt_header(root: Path, repo_id: str) -> None:
    """Overwrite the start of the JSON header: the file stays the same size, the header is garbage."""
    path = root / repo_id / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff\x00{[not json]}\x01\x02\x03"
    write_repo(root, repo_id, {"model.safetensors": bytes(data)})


def missing_shard(root: Path, repo_id: str) -> None:
    """A sharded checkpoint whose index names a shard that was never uploaded."""
    staging = root.parent / "staging-shards" / repo_id
    save_hf_repo(staging, model_state(77), CONFIG, tiny_vocab(), dtype="float16", max_shard_bytes=100_000)
    shards = sorted(staging.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()
    write_repo(root, repo_id, {p.name: p for p in sorted(staging.iterdir())})


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real ``hubsentry`` command (the operator's view)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def services_for(config_path: Path) -> Iterator[Services]:
    config = load_config(config_path)
    services = build_services(
        config, processor_factory=pipeline_processor, stop=threading.Event(), sinks=alert_sinks(config)
    )
    try:
        yield services
    finally:
        services.close()


def budget_used(hub: LocalHub) -> dict[str, int]:
    """Requests the daemon sent per rate-limit bucket (every one, faulted or not, counts against ours)."""
    counts = {"api": 0, "resolvers": 0, "cdn": 0}
    for record in hub.log:
        if record.bucket in counts:
            counts[record.bucket] += 1
    return counts


def items(db: Path, *, first: bool = False) -> dict[str, dict[str, Any]]:
    """Work items by repo: the latest per repo, or with ``first`` the earliest."""
    with read_db(db) as conn:
        conn.row_factory = _dict_row
        rows = conn.execute(f"SELECT * FROM work_items ORDER BY id {'DESC' if first else ''}").fetchall()
    return {row["repo_id"]: row for row in rows}


def _dict_row(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def noted(row: dict[str, Any]) -> str:
    """The "done, but..." reason of an item: the worker's note, or the notes in its scan outcome."""
    outcome = json.loads(row["outcome_json"] or "{}")
    return " | ".join([row["last_error"] or "", *outcome.get("notes", ())])


def run_until_settled(services: Services, *, want: dict[str, str], db: Path, timeout: float) -> list[Any]:
    """Cycles (with the backoff waits between them) until every repo in ``want`` is in its state."""
    reports = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports.append(run_cycle(services))
        state = {repo: row["state"] for repo, row in items(db).items()}
        if all(state.get(repo) == wanted for repo, wanted in want.items()):
            return reports
        time.sleep(0.5)
    raise AssertionError(f"not settled after {timeout:.0f}s: {items(db)}")


HEALTHY = {"ok/indie-1": "independent", "ok/indie-2": "independent", "thief/guard-ft": "derived"}
TRANSIENT = ("fault/five-hundred", "fault/reset", "fault/timeout", "fault/truncated", "fault/content-range")
NOTED = {
    "gone/deleted": "no longer exists",
    "moved/rewritten": "moved to a new commit",  # the pinned commit is gone, the repo is not
    "broken/header": "weights not readable",
    "broken/shard": "not in the repo",
}


def test_one_hub_every_fault(
    tmp_path: Path, template: Template, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "hub"
    root.mkdir()
    uploads = {**HEALTHY, **dict.fromkeys(TRANSIENT, "independent")}
    uploads |= {"gone/deleted": "independent", "moved/rewritten": "independent", "limited/repo": "derived"}
    uploads |= {"broken/header": "independent", "dead/always": "independent"}
    for i, (repo_id, kind) in enumerate(sorted(uploads.items())):
        publish(root, repo_id, kind, seed=300 + i, protected_dir=template.protected_dir)
    corrupt_header(root, "broken/header")
    missing_shard(root, "broken/shard")
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        budget = f"api_requests_per_window = {API_CEILING}\nresolver_requests_per_window = {RESOLVER_CEILING}"
        config_path = write_config(
            tmp_path / "hubsentry.toml",
            db=db,
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            hub_timeout="2s",
            max_attempts=3,
            extra_hub=budget + '\nrate_window = "5m"',
        )
        rules = {
            # inner retries (4 per call) are exhausted in the first cycle; the next cycle succeeds
            "five-hundred": FaultRule(
                "GET", r"^/api/models/fault/five-hundred", FaultAction.status(500), times=4
            ),
            "reset": FaultRule(None, r"^/fault/reset/resolve/", FaultAction.reset(), times=4),
            "timeout": FaultRule("GET", r"^/api/models/fault/timeout", FaultAction.delay(3.0), times=4),
            "truncated": FaultRule(
                "GET", f"^/cdn/{lfs_sha256(hub, 'fault/truncated')}", FaultAction.truncate(100), times=4
            ),
            "content-range": FaultRule(
                "GET",
                f"^/cdn/{lfs_sha256(hub, 'fault/content-range')}",
                FaultAction.wrong_content_range(8),
                times=4,
            ),
            "429": FaultRule(
                "GET", r"^/api/models/limited/repo", FaultAction.rate_limited(reset_s=2), times=1
            ),
            "always-500": FaultRule(None, r"^/api/models/dead/always", FaultAction.status(503)),
            # deleted / rewritten between listing and reading: held while the test changes the repo
            "deleted": FaultRule(
                "GET", r"^/api/models/gone/deleted", FaultAction.delay(2.0), times=1, name="deleted"
            ),
            "rewritten": FaultRule(
                "GET",
                r"^/moved/rewritten/resolve/",
                FaultAction.delay(2.0),
                times=1,
                match_range=True,
                name="rewritten",
            ),
        }
        for rule in rules.values():
            hub.faults.add(rule)

        def when_held(rule: FaultRule, change: Callable[[], object]) -> threading.Thread:
            """Change the hub while ``rule`` holds a request, like an uploader racing the scan."""

            def watch() -> None:
                wait_until(lambda: rule.fired, timeout=60, what=f"the held request ({rule.name})")
                change()

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            return thread

        changers = [
            when_held(rules["deleted"], lambda: shutil.rmtree(root / "gone" / "deleted")),
            when_held(
                rules["rewritten"], lambda: write_repo(root, "moved/rewritten", {"README.md": "new\n"})
            ),
        ]
        with services_for(config_path) as services:
            first = run_cycle(services)
            for changer in changers:
                changer.join(timeout=60)
            assert not first.ok  # something failed and is retried
            state = items(db, first=True)  # the commit each repo was listed at (not a head it moved to)
            for repo in (*HEALTHY, "limited/repo"):
                assert state[repo]["state"] == "done", (repo, state[repo])
                assert state[repo]["attempts"] == 1
            for repo, note in NOTED.items():  # file problems and vanished repos: done, with the reason
                assert state[repo]["state"] == "done", (repo, state[repo])
                assert note in noted(state[repo]), (
                    repo,
                    state[repo]["last_error"],
                    state[repo]["outcome_json"],
                )
                assert state[repo]["attempts"] == 1

            want = dict.fromkeys([*HEALTHY, *TRANSIENT, *NOTED, "limited/repo"], "done") | {
                "dead/always": "dead"
            }
            run_until_settled(services, want=want, db=db, timeout=120)
            settled = items(db)
            for repo in TRANSIENT:  # failed once (each fault outlasts the 4 in-call retries), then done
                assert settled[repo]["attempts"] == 2, (repo, settled[repo])
                assert settled[repo]["last_error"] is None
            # the rewritten repo's new commit is a new item, enqueued at once as the head it moved to
            with read_db(db) as conn:
                commits = conn.execute(
                    "SELECT commit_sha, state, listed_by FROM work_items WHERE repo_id = 'moved/rewritten'"
                ).fetchall()
            current = hub.index.repo("moved/rewritten")
            assert current is not None
            assert (current.commit, "done", "commit-moved") in commits
            assert len(commits) == 2

            # the operator sees the dead item and why, fixes the cause and re-queues it
            listed = cli(config_path, "queue", "list", "--state", "dead", "--json")
            assert listed.returncode == 0, listed.stderr
            (dead,) = json.loads(listed.stdout)
            assert dead["repo_id"] == "dead/always"
            assert dead["attempts"] == 3
            assert "TransientHubError" in dead["last_error"]
            assert "503" in dead["last_error"]
            status = cli(config_path, "status", "--json")
            assert json.loads(status.stdout)["queue"]["counts"]["dead"] == 1
            hub.faults.clear()
            requeued = cli(config_path, "queue", "requeue", "--dead")
            assert requeued.returncode == 0, requeued.stderr
            assert "requeued 1 item(s)" in requeued.stdout
            last = run_cycle(services)
            assert last.ok
        assert items(db)["dead/always"]["state"] == "done"

        # the 429: its headers were obeyed (the next request waited for the reset), nothing else was lost
        answered = [r for r in hub.log if r.path.startswith("/api/models/limited/repo")]
        assert answered[0].status == 429
        assert answered[1].t - answered[0].t >= 1.9
        assert "hub answered 429" in caplog.text

        # every failure was logged with the repo and the reason, at the level an operator watches
        failures = [r.getMessage() for r in caplog.records if r.name == "monitor.worker" and r.levelno >= 30]
        causes = {
            "fault/five-hundred": "500",
            "fault/reset": "TransientHubError",
            "fault/timeout": "TransientHubError",
            "fault/truncated": "TransientHubError",
            "fault/content-range": "Content-Range",
        }
        for repo, cause in causes.items():
            lines = [m for m in failures if f"hf:{repo}@" in m and "attempt 1/3 failed" in m]
            assert len(lines) == 1, (repo, failures)
            assert cause in lines[0], lines[0]
        for repo in ("gone/deleted", "moved/rewritten"):
            note = NOTED[repo]
            assert any(
                f"hf:{repo}@" in m and "done without a verdict" in m and note in m for m in failures
            ), repo
        assert any("giving up after 3 attempts" in m for m in failures)

        # never above the configured per-window ceilings (the whole test runs inside one 5-minute window)
        used = budget_used(hub)
        assert used["api"] <= API_CEILING
        assert used["resolvers"] <= RESOLVER_CEILING
        with read_db(db) as conn:
            alerts = {r[0] for r in conn.execute("SELECT repo_id FROM alerts")}
        assert alerts == {"thief/guard-ft", "limited/repo"}
        assert sorted(m.alert_key is not None for m in slack.messages(CHANNEL)) == [True, True]


def test_the_request_budget_binds_and_loses_nothing(
    tmp_path: Path, template: Template, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """With a ceiling far below what the uploads need, the daemon stops at the ceiling and keeps the rest."""
    root = tmp_path / "hub"
    root.mkdir()
    uploads = {f"indie/m-{i}": "independent" for i in range(8)}
    for i, (repo_id, kind) in enumerate(sorted(uploads.items())):
        publish(root, repo_id, kind, seed=400 + i, protected_dir=template.protected_dir)
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        config_path = write_config(
            tmp_path / "hubsentry.toml",
            db=db,
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            extra_hub='api_requests_per_window = 6\nresolver_requests_per_window = 9\nrate_window = "5m"',
        )
        with services_for(config_path) as services:
            for _ in range(3):
                run_cycle(services)
        used = budget_used(hub)
        assert used["api"] <= 6
        assert used["resolvers"] <= 9
        state = items(db)
        assert set(state) == set(uploads)  # every upload is queued: none lost
        done = [r for r in state.values() if r["state"] == "done"]
        waiting = [r for r in state.values() if r["state"] != "done"]
        assert done
        assert waiting
        for row in waiting:
            assert row["state"] in ("pending", "failed")
            assert row["attempts"] == 0  # waiting for the budget is not the item's fault
            assert row["last_error"] is None or "RateLimited" in row["last_error"]
        assert "bucket is closed" in caplog.text


def test_the_request_budget_holds_across_restarts_and_kills(tmp_path: Path, template: Template) -> None:
    """The ceiling binds all processes on the host together: three ``hubsentry scan`` runs and a daemon
    killed with ``kill -9`` between them send at most one ceiling's worth in the window. Before, every new
    process started a fresh window (the soak saw 1,742 API requests in 5 minutes against 1,000)."""
    root = tmp_path / "hub"
    root.mkdir()
    uploads = {f"indie/r-{i}": "independent" for i in range(8)}
    for i, (repo_id, kind) in enumerate(sorted(uploads.items())):
        publish(root, repo_id, kind, seed=450 + i, protected_dir=template.protected_dir)
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        config_path = write_config(
            tmp_path / "hubsentry.toml",
            db=db,
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            extra_hub='api_requests_per_window = 6\nresolver_requests_per_window = 9\nrate_window = "5m"',
        )
        first = cli(config_path, "scan")
        assert "bucket is closed" in first.stderr  # the first process alone reaches the ceiling
        after_first = budget_used(hub)
        with running(Daemon(config_path, tmp_path, daemon_env()).start()) as daemon:
            wait_until(lambda: "hubsentry running" in daemon.log(), timeout=60, what="the daemon's start")
            time.sleep(2)  # it polls, finds the budget spent by the others, waits
            daemon.kill()
        for _ in range(2):
            again = cli(config_path, "scan")
            assert again.returncode in (0, 1), again.stderr
        used = budget_used(hub)
        assert used["api"] <= 6, used
        assert used["resolvers"] <= 9, used
        assert used == after_first  # nothing after the first process: the window is still full
        assert set(items(db)) == set(uploads)  # and nothing was lost meanwhile
        assert (db.parent / "hubsentry.db.ratelimit-hf.json").exists()


def slack_outbox(db: Path) -> dict[str, int]:
    with read_db(db) as conn:
        rows = conn.execute("SELECT state, COUNT(*) FROM outbox WHERE sink LIKE 'slack:%' GROUP BY state")
        return dict(rows.fetchall())


def test_slack_failures_lose_nothing_and_never_block_scanning(tmp_path: Path, template: Template) -> None:
    """429 + Retry-After, a hanging Slack, an invalid channel, a revoked token, then an hour-long Retry-After:
    scanning goes on meanwhile, the operator is told in logs and ``status``, and every alert arrives once."""
    root = tmp_path / "hub"
    root.mkdir()
    for i, repo_id in enumerate(["thief/a", "thief/b"]):
        publish(root, repo_id, "derived", seed=500 + i, protected_dir=template.protected_dir)
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        config_path = write_config(
            tmp_path / "hubsentry.toml", db=db, endpoint=hub.endpoint, slack_url=slack.base_url
        )
        # longer than the 5 s client timeout: the post lands, the answer is lost
        slack.delay(seconds=6, times=1)
        slack.fail(status=429, retry_after=1, times=1)
        with running(Daemon(config_path, tmp_path, daemon_env()).start()) as daemon:
            wait_until(lambda: len(slack.messages(CHANNEL)) == 1, timeout=60, what="the slow post")
            assert slack_outbox(db).get("delivered", 0) == 0  # the sender gave up waiting; it will look it up
            # Slack is failing: scanning goes on regardless
            publish(root, "thief/c", "derived", seed=599, protected_dir=template.protected_dir)
            wait_until(lambda: progress(db)["items"].get("done", 0) == 3, timeout=60, what="the new scan")
            wait_until(lambda: slack_outbox(db).get("delivered", 0) == 3, timeout=90, what="the recovery")
            assert "had already arrived before the interruption" in daemon.log()
            assert "rate limited by Slack (Retry-After: 1" in daemon.log()

            slack.fail(error="channel_not_found", times=1)
            publish(root, "thief/d", "derived", seed=600, protected_dir=template.protected_dir)
            wait_until(lambda: slack_outbox(db).get("dead", 0) == 1, timeout=60, what="a dead letter")
            slack.revoke_token()
            publish(root, "thief/e", "derived", seed=601, protected_dir=template.protected_dir)
            wait_until(lambda: slack_outbox(db).get("dead", 0) == 2, timeout=60, what="a second dead letter")
            status = cli(config_path, "status", "--json")
            (sink,) = [s for s in json.loads(status.stdout)["outbox"] if s["sink"].startswith("slack:")]
            assert (sink["dead"], sink["delivered"]) == (2, 3)
            assert "token_revoked" in sink["last_dead_error"]
            log = daemon.log()
            assert log.count("DEAD LETTER") == 2
            assert "channel_not_found" in log
            assert "token_revoked" in log
            assert daemon.stop() == 0

        # the operator installs a new token and re-queues the dead letters
        rotated = "xoxb-crash-safety-rotated-token-0a1b2c"
        slack.add_token(rotated)
        with Store(db) as store:
            assert requeue_dead(store) == 2
        with running(Daemon(config_path, tmp_path, daemon_env(SLACK_BOT_TOKEN=rotated)).start()) as daemon:
            wait_until(
                lambda: slack_outbox(db).get("delivered", 0) == 5, timeout=60, what="the re-queued alerts"
            )
            # an hour-long rate limit: the sender does not sleep, the row waits in the database
            slack.fail(status=429, retry_after=3600, times=1)
            publish(root, "thief/f", "derived", seed=602, protected_dir=template.protected_dir)
            wait_until(lambda: "Retry-After: 3600" in daemon.log(), timeout=60, what="the hour-long 429")
            publish(root, "indie/g", "independent", seed=603, protected_dir=template.protected_dir)
            wait_until(
                lambda: progress(db)["items"].get("done", 0) == 7, timeout=60, what="scanning meanwhile"
            )
            status = cli(config_path, "status", "--json")
            (sink,) = [s for s in json.loads(status.stdout)["outbox"] if s["sink"].startswith("slack:")]
            assert sink["pending"] == 1
            assert "Retry-After: 3600" in sink["last_error"]
            due = from_iso(sink["next_attempt_at"])
            assert due is not None
            assert due.timestamp() - time.time() > 3500
            assert daemon.stop() == 0
        keys = [m.alert_key for m in slack.messages(CHANNEL)]
        with read_db(db) as conn:
            alert_keys = [r[0] for r in conn.execute("SELECT alert_key FROM alerts ORDER BY seq")]
        assert len(alert_keys) == 6
        assert len(keys) == len(set(keys)) == 5  # every alert once; the sixth waits for its hour
        assert set(keys) < set(alert_keys)


def test_unreadable_uploads_are_logged_with_the_reason(
    tmp_path: Path, template: Template, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "hub"
    root.mkdir()
    publish(root, "broken/header", "independent", seed=700, protected_dir=template.protected_dir)
    corrupt_header(root, "broken/header")
    missing_shard(root, "broken/shard")
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        config_path = write_config(
            tmp_path / "c.toml", db=db, endpoint=hub.endpoint, slack_url=slack.base_url
        )
        with services_for(config_path) as services:
            assert run_cycle(services).drain.done == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for repo, reason in (("broken/header", "weights not readable"), ("broken/shard", "not in the repo")):
        assert any(repo in m and reason in m for m in warnings), (repo, warnings)


def test_a_stalled_read_times_out_after_the_configured_timeout(
    tmp_path: Path, template: Template, env: None
) -> None:
    root = tmp_path / "hub"
    root.mkdir()
    publish(root, "acme/slow", "independent", seed=701, protected_dir=template.protected_dir)
    with LocalHub(root, token=HF_TOKEN) as hub:
        config_path = write_config(
            tmp_path / "c.toml",
            db=tmp_path / "h.db",
            endpoint=hub.endpoint,
            slack_url=hub.endpoint,
            hub_timeout="2s",
        )
        source = build_hub(load_config(config_path).hubs[0])
        files = source.open_files(source.snapshot("acme/slow"), budget=None)
        reader = files.open("model.safetensors")
        hub.faults.add(FaultRule("GET", r"^/cdn/", FaultAction.delay(6.0), times=1))  # one stalled answer
        started = time.monotonic()
        assert reader.read(0, 8)  # the retry after the timeout succeeds
        assert time.monotonic() - started < 4.5
