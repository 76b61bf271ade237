"""kill -9 at the worst moments: mid-listing, mid-read, mid-write, mid-Slack-send; nothing lost or sent twice.

Every test runs the real daemon (``hubsentry run`` in a subprocess, real scan pipeline, real clients)
against a LocalHub and a LocalSlack in this process, SIGKILLs it at a chosen point, restarts it until the
queue and the outbox are idle, and then checks the whole state (`check_exactly_once`):

* every (repo, commit) on the hub has exactly one work item, ``done`` with its outcome;
* the alerts are exactly the derived uploads (one each), every outbox row is delivered;
* LocalSlack received every alert exactly once (by the alert key in the message metadata), in ``seq`` order;
* ``PRAGMA integrity_check`` is ``ok``.

Kills are triggered by events, not sleeps: a LocalHub fault rule that holds a request (``rule.fired``), a
state committed in the database, or LocalSlack accepting a post. The world (a tiny protected Llama
registered once per module, uploads derived from it or independent of it, and an exact re-upload) and the
`Daemon` harness are shared with ``test_faults_end_to_end.py`` and ``test_security.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.config import load_config
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.localhub.virtual_llama import LlamaShape, llama_tensor_specs
from monitor.localslack import LocalSlack, Message
from monitor.store import Store, connect, from_iso
from monitor.synth.export import save_hf_repo
from monitor.synth.models import LlamaConfig
from monitor.synth.text import WordVocab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HF_TOKEN = "hf_CrashSafetyHubToken7f3a9c0d1e2f"
SLACK_TOKEN = "xoxb-crash-safety-slack-token-5e1d4c3b"
FP_SECRET = "crash-safety-sampling-secret-91b2a7"
PROTECTED = "acme/guard"
CHANNEL = "model-ip"
PROTECTED_SEED = 7
DEFAULT_UPLOADS = {
    "thief/guard-ft-1": "derived",
    "thief/guard-ft-2": "derived",
    "mirror/guard": "exact",
    "indie/model-1": "independent",
    "indie/model-2": "independent",
}


# ---------------------------------------------------------------------------------------------- the world

CONFIG = LlamaConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


@functools.cache
def tiny_vocab() -> WordVocab:
    """A 512-token word vocabulary shared by every upload (token strings are what uploads are matched by)."""
    words = [f"tok{i:04d}" for i in range(600) for _ in range(600 - i)]
    return WordVocab.build(words, CONFIG.vocab_size)


@functools.cache
def model_state(seed: int) -> dict[str, np.ndarray]:
    """Llama weights as a fresh initialisation would draw them (linear N(0, 0.02), RMSNorm N(1, 0.1))."""
    rng = np.random.default_rng(seed)
    return {
        name: (init.get("mean", 0.0) + init["std"] * rng.standard_normal(dims)).astype(np.float32)
        for name, dims, init in _specs()
    }


def derived_state(noise_seed: int, *, rel_noise: float = 0.05) -> dict[str, np.ndarray]:
    """The protected weights plus ``rel_noise`` of their scale: what a fine-tune looks like to the tests."""
    rng = np.random.default_rng(noise_seed)
    base = model_state(PROTECTED_SEED)
    return {
        name: (base[name] + rel_noise * init["std"] * rng.standard_normal(dims)).astype(np.float32)
        for name, dims, init in _specs()
    }


def _specs() -> list[tuple[str, list[int], dict[str, float]]]:
    shape = LlamaShape(
        d_model=CONFIG.hidden_size,
        n_layers=CONFIG.num_hidden_layers,
        d_ff=CONFIG.intermediate_size,
        n_heads=CONFIG.num_attention_heads,
        n_kv_heads=CONFIG.num_key_value_heads,
        vocab=CONFIG.vocab_size,
    )
    return [(t["name"], t["shape"], t["init"]) for t in llama_tensor_specs(shape)]


def publish(root: Path, repo_id: str, kind: str, *, seed: int, protected_dir: Path) -> None:
    """Put one upload (real float16 safetensors, config, tokenizer) on the hub folder.

    ``derived``: the protected weights plus 5 % noise (a fine-tune); ``independent``: other weights of the
    same shape; ``exact``: a byte-identical copy of the protected files (found from the listing's LFS
    digests).
    """
    if kind == "exact":
        write_repo(root, repo_id, {p.name: p for p in sorted(protected_dir.iterdir()) if p.is_file()})
        return
    if kind == "derived":
        state = derived_state(seed)
    elif kind == "independent":
        state = model_state(seed)
    else:
        raise ValueError(f"unknown upload kind {kind!r}")
    staging = root.parent / "staging" / repo_id
    save_hf_repo(staging, state, CONFIG, tiny_vocab(), dtype="float16")
    write_repo(root, repo_id, {p.name: p for p in sorted(staging.iterdir())})  # atomic for the hub


def write_protected(folder: Path) -> Path:
    """The protected model as real files (what its owner registers from disk)."""
    return save_hf_repo(folder, model_state(PROTECTED_SEED), CONFIG, tiny_vocab(), dtype="float16")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Template:
    """A registered protected model: its files and a database (with references) to copy per test."""

    protected_dir: Path
    db: Path


def build_template(folder: Path) -> Template:
    protected_dir = write_protected(folder / "owner" / "guard")
    db = folder / "template.db"
    config_path = folder / "template.toml"
    config_path.write_text(
        f'[store]\npath = "{db}"\n[fingerprint]\nsecret_env = "HUBSENTRY_SECRET"\n[server]\nlisten = ""\n'
    )
    from monitor.registry import add

    with environment(HUBSENTRY_SECRET=FP_SECRET):
        config = load_config(config_path)
        with Store(db) as store:
            add(store, str(protected_dir), name=PROTECTED, owner="ip-team", config=config)
    return Template(protected_dir, db)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("protected"))


def copy_database(source: Path, dest: Path) -> None:
    """A consistent copy (``VACUUM INTO``, the documented backup method); references stay shared."""
    with contextlib.closing(sqlite3.connect(source)) as conn:
        conn.execute("VACUUM INTO ?", [str(dest)])


def write_config(
    path: Path,
    *,
    db: Path,
    endpoint: str,
    slack_url: str,
    workers: int = 2,
    hub_timeout: str = "5s",
    max_attempts: int = 6,
    lease: str = "10s",
    extra_hub: str = "",
    extra: str = "",
    hf_token_line: str = 'token_env = "HF_TOKEN"',
    slack_token_line: str = 'token_env = "SLACK_BOT_TOKEN"',
) -> Path:
    """A daemon config for tests: 1 s polls, 10 s leases (the minimum) unless ``lease`` says otherwise, short
    backoffs, loopback only."""
    path.write_text(f"""\
[store]
path = "{db}"

[[hubs]]
name = "hf"
endpoint = "{endpoint}"
poll_interval = "1s"
jitter = "0s"
initial_lookback = "1d"
{hf_token_line}
budget_per_repo = "4MiB"
timeout = "{hub_timeout}"
{extra_hub}

[alerts]
min_verdict = "derived"

[alerts.slack]
channel = "#{CHANNEL}"
{slack_token_line}
base_url = "{slack_url}"
timeout = "5s"

[fingerprint]
secret_env = "HUBSENTRY_SECRET"

[executor]
kind = "threads"
workers = {workers}

[server]
listen = ""

[queue]
max_attempts = {max_attempts}
lease = "{lease}"
backoff_base = "1s"
backoff_max = "2s"

{extra}
""")
    return path


def daemon_env(**extra: str) -> dict[str, str]:
    """The child's environment: no inherited hub/Slack settings, our tokens, hermetic huggingface_hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBSENTRY_", "SLACK_"))}
    env.update(
        HF_TOKEN=HF_TOKEN,
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        HUBSENTRY_SECRET=FP_SECRET,
        HF_HOME=os.environ["HF_HOME"],
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_XET="1",
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- the daemon


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Daemon:
    """``hubsentry run`` in a subprocess, restartable; one stderr log file per incarnation.

    Attributes:
        kills (`int`): SIGKILLs delivered. starts (`int`): processes started.
    """

    def __init__(
        self,
        config: Path,
        workdir: Path,
        env: dict[str, str],
        *,
        log_level: str = "INFO",
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.env = env
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.kills = 0
        self.starts = 0

    def start(self) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.workdir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monitor",
                    "--config",
                    str(self.config),
                    "--log-level",
                    self.log_level,
                    "run",
                ],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL now (no handler runs, no write is flushed) and reap the process."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL, self.log_tail()
        self.kills += 1

    def stop(self) -> int:
        """SIGTERM and wait for the clean exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)

    def ensure_stopped(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self, incarnation: int = -1) -> str:
        return self.logs[incarnation].read_text(errors="replace") if self.logs else ""

    def all_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"the daemon exited unexpectedly:\n{self.log_tail()}")


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        yield daemon
    finally:
        daemon.ensure_stopped()


# ---------------------------------------------------------------------------------------------- the state


def read_db(path: Path) -> Any:
    return contextlib.closing(connect(path, readonly=True).conn)


def progress(db: Path) -> dict[str, Any]:
    """Queue and outbox counts by state, as the daemon committed them."""
    with read_db(db) as conn:
        items = dict(conn.execute("SELECT state, COUNT(*) FROM work_items GROUP BY state").fetchall())
        outbox = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        alerts = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    return {"items": items, "outbox": outbox, "alerts": alerts, "n_items": sum(items.values())}


def is_idle(db: Path, expected_items: int, expected_alerts: int, *, sinks: int = 2) -> bool:
    state = progress(db)
    return (
        state["n_items"] == expected_items
        and state["items"].get("done", 0) == expected_items
        and state["alerts"] == expected_alerts
        and state["outbox"].get("delivered", 0) == expected_alerts * sinks
    )


def leases_expire_at(db: Path) -> float:
    """Epoch seconds when the last lease of a ``running`` item expires (now if none is running)."""
    with read_db(db) as conn:
        row = conn.execute("SELECT MAX(lease_expires_at) FROM work_items WHERE state = 'running'").fetchone()
    moment = from_iso(row[0]) if row and row[0] else None
    return moment.timestamp() if moment is not None else time.time()


def slack_keys(slack: LocalSlack) -> list[str | None]:
    return [m.alert_key for m in slack.messages(CHANNEL)]


@dataclass
class Expectation:
    repos: dict[str, str] = field(default_factory=dict)  # repo -> kind

    @property
    def alerting(self) -> set[str]:
        return {r for r, kind in self.repos.items() if kind in ("derived", "exact")}


def check_exactly_once(db: Path, hub: LocalHub, slack: LocalSlack, expected: Expectation) -> dict[str, Any]:
    """The end-state invariants (module docstring); returns figures for the caller's report."""
    current = {r.repo_id: r.commit for r in hub.index.scan()}
    assert set(current) == set(expected.repos)
    with read_db(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        items = conn.execute(
            "SELECT repo_id, commit_sha, state, outcome_json, attempts FROM work_items"
        ).fetchall()
        alerts = conn.execute(
            "SELECT alert_key, seq, repo_id, commit_sha FROM alerts ORDER BY seq"
        ).fetchall()
        outbox = conn.execute("SELECT alert_key, sink, state FROM outbox").fetchall()
        results = conn.execute("SELECT repo_id, commit_sha, protected, verdict FROM scan_results").fetchall()
    pairs = Counter((repo, commit) for repo, commit, *_ in items)
    assert set(pairs) == set(current.items()), "an upload was missed or a stale commit was scanned"
    assert max(pairs.values()) == 1, f"duplicate work items: {pairs}"
    assert {state for *_, state, _, _ in items} == {"done"}
    assert all(outcome is not None for *_, outcome, _ in items)
    result_keys = Counter((repo, commit, protected) for repo, commit, protected, _ in results)
    assert max(result_keys.values(), default=1) == 1
    derived = {repo for repo, _, _, verdict in results if verdict == "derived"}
    assert derived == expected.alerting
    alert_repos = Counter(repo for _, _, repo, _ in alerts)
    assert set(alert_repos) == expected.alerting
    assert max(alert_repos.values(), default=1) == 1
    assert all(current[repo] == commit for _, _, repo, commit in alerts)
    assert {state for *_, state in outbox} <= {"delivered"}
    assert Counter(sink for _, sink, _ in outbox) == {f"slack:#{CHANNEL}": len(alerts), "log": len(alerts)}
    keys = slack_keys(slack)
    sent = Counter(keys)
    assert set(sent) == {key for key, *_ in alerts}, "an alert was never delivered to Slack"
    assert max(sent.values(), default=1) == 1, f"an alert was delivered twice: {sent}"
    seq = {key: s for key, s, *_ in alerts}
    assert [seq[k] for k in keys] == sorted(seq[k] for k in keys), "alerts arrived out of order"
    return {
        "items": len(items),
        "alerts": len(alerts),
        "slack_messages": len(keys),
        "attempts": sum(a for *_, a in items),
    }


@dataclass
class Scene:
    """One test's world: hub folder and server, Slack, config and database."""

    tmp: Path
    root: Path
    hub: LocalHub
    slack: LocalSlack
    db: Path
    config: Path
    expected: Expectation

    def daemon(self, **env: str) -> Daemon:
        return Daemon(self.config, self.tmp, daemon_env(**env))

    def wait_idle(self, daemon: Daemon, *, timeout: float = 90) -> None:
        n, a = len(self.expected.repos), len(self.expected.alerting)

        def idle() -> bool:
            daemon.assert_alive()
            return is_idle(self.db, n, a)

        try:
            wait_until(idle, timeout=timeout, what="an idle queue and outbox", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {progress(self.db)}\n{daemon.log_tail()}") from None


@contextlib.contextmanager
def scene(
    tmp_path: Path,
    template: Template,
    *,
    uploads: dict[str, str] | None = None,
    page_size: int = 100,
    on_message: Callable[[Message], None] | None = None,
    **config: Any,
) -> Iterator[Scene]:
    root = tmp_path / "hub"
    root.mkdir()
    uploads = dict(DEFAULT_UPLOADS if uploads is None else uploads)
    for i, (repo_id, kind) in enumerate(sorted(uploads.items())):
        publish(root, repo_id, kind, seed=100 + i, protected_dir=template.protected_dir)
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with (
        LocalHub(root, token=HF_TOKEN, page_size=page_size) as hub,
        LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL], on_message=on_message) as slack,
    ):
        path = write_config(
            tmp_path / "hubsentry.toml", db=db, endpoint=hub.endpoint, slack_url=slack.base_url, **config
        )
        yield Scene(tmp_path, root, hub, slack, db, path, Expectation(uploads))


# ---------------------------------------------------------------------------------------------- the tests


def test_kill_mid_listing_loses_no_repo(tmp_path: Path, template: Template) -> None:
    with scene(tmp_path, template, page_size=2) as s:
        # the second listing page is held for 30 s: the daemon is killed while waiting for it
        held = s.hub.faults.add(
            FaultRule("GET", r"^/api/models$", FaultAction.delay(30), skip=1, times=1, name="held-page")
        )
        with running(s.daemon().start()) as daemon:
            wait_until(lambda: held.fired, timeout=30, what="the held listing page")
            daemon.kill()
            state = progress(s.db)
            assert state["n_items"] == 0  # nothing half-enqueued...
            with read_db(s.db) as conn:  # ...and no cursor moved past what was not enqueued
                assert conn.execute(
                    "SELECT COUNT(*) FROM hub_cursors WHERE high_water IS NOT NULL"
                ).fetchone() == (0,)
            daemon.start()
            s.wait_idle(daemon)
            check_exactly_once(s.db, s.hub, s.slack, s.expected)
            assert daemon.stop() == 0


def test_kill_mid_read_rescans_at_once_after_a_restart(tmp_path: Path, template: Template) -> None:
    """The killed daemon's items hold 5-minute leases; the restarted daemon sees their owner is gone (same
    host, no such process) and rescans them at once instead of after the lease."""
    with scene(tmp_path, template, lease="5m") as s:
        held = s.hub.faults.add(
            FaultRule("GET", r"^/cdn/", FaultAction.delay(30), match_range=True, times=1, name="held-read")
        )
        with running(s.daemon().start()) as daemon:
            wait_until(lambda: held.fired, timeout=30, what="a ranged read in flight")
            daemon.kill()
            with read_db(s.db) as conn:
                running_items = conn.execute("SELECT id FROM work_items WHERE state = 'running'").fetchall()
            assert running_items, "the killed scan must still hold its lease"
            assert leases_expire_at(s.db) - time.time() > 250
            restarted = time.monotonic()
            daemon.start()
            s.wait_idle(daemon, timeout=90)
            assert time.monotonic() - restarted < 120  # not the 300 s lease
            figures = check_exactly_once(s.db, s.hub, s.slack, s.expected)
            assert figures["attempts"] > figures["items"]  # the interrupted scans ran again
            assert "which is no longer running (killed?)" in daemon.log()
            assert daemon.stop() == 0


def test_kill_while_many_items_commit(tmp_path: Path, template: Template) -> None:
    uploads = {f"thief/ft-{i}": "derived" for i in range(5)} | {
        f"indie/m-{i}": "independent" for i in range(7)
    }
    with scene(tmp_path, template, uploads=uploads, workers=4) as s, running(s.daemon()) as daemon:
        done_before = 0
        for _ in range(2):  # two kills, each right after a commit, while other scans are finishing
            daemon.start()
            wait_until(
                lambda: progress(s.db)["items"].get("done", 0) > done_before,  # noqa: B023
                timeout=60,
                what="a committed outcome",
                interval=0.005,
            )
            daemon.kill()
            done_before = progress(s.db)["items"].get("done", 0)
            # restarted at once: the new daemon reclaims the killed one's leases itself
        assert done_before < len(uploads), "the kills must land before the work is finished"
        daemon.start()
        s.wait_idle(daemon)
        check_exactly_once(s.db, s.hub, s.slack, s.expected)
        assert daemon.stop() == 0


def test_kill_after_slack_accepted_the_post_before_the_answer(tmp_path: Path, template: Template) -> None:
    """The ambiguous case: Slack stored the message, the daemon dies before it reads the answer."""
    victim: list[Daemon] = []

    def kill_on_first_post(message: Message) -> None:
        if victim and victim[0].kills == 0:
            victim[0].kill()

    with scene(tmp_path, template, on_message=kill_on_first_post) as s, running(s.daemon()) as daemon:
        victim.append(daemon)
        daemon.start()
        wait_until(lambda: daemon.kills == 1, timeout=60, what="the kill on the first Slack post")
        assert len(s.slack.messages(CHANNEL)) == 1
        with read_db(s.db) as conn:
            states = [r[0] for r in conn.execute("SELECT state FROM outbox WHERE sink LIKE 'slack:%'")]
        assert "sending" in states, "the interrupted row must be left 'sending'"
        daemon.start()
        s.wait_idle(daemon)
        check_exactly_once(s.db, s.hub, s.slack, s.expected)
        assert "had already arrived before the interruption" in daemon.log()
        assert daemon.stop() == 0


@pytest.mark.parametrize("slack_delay", [2.0, 9.0])
def test_kill_while_a_slow_slack_is_processing_the_post(
    tmp_path: Path, template: Template, slack_delay: float
) -> None:
    """Killed while the post is on the wire; Slack completes it ``slack_delay`` s later, after the restart."""
    with scene(tmp_path, template) as s, running(s.daemon()) as daemon:
        s.slack.delay(seconds=slack_delay)
        daemon.start()

        def sending() -> bool:
            with read_db(s.db) as conn:
                return bool(
                    conn.execute(
                        "SELECT 1 FROM outbox WHERE state = 'sending' AND sink LIKE 'slack:%'"
                    ).fetchone()
                )

        wait_until(sending, timeout=60, what="a Slack row marked sending", interval=0.005)
        time.sleep(0.2)  # the request is on the wire; LocalSlack holds it
        daemon.kill()
        killed_at = time.monotonic()
        daemon.start()  # at once: the held post lands while the new daemon runs
        s.wait_idle(daemon)
        time.sleep(max(0.0, killed_at + slack_delay + 0.5 - time.monotonic()))  # the held post has landed
        check_exactly_once(s.db, s.hub, s.slack, s.expected)
        assert daemon.stop() == 0


def test_restart_storm(tmp_path: Path, template: Template) -> None:
    """kill -9 every 1-2.5 s, from start-up to mid-scan, while a Slack outage comes and goes."""
    with scene(tmp_path, template) as s, running(s.daemon()) as daemon:
        s.slack.outage(mode="503")
        for round_ in range(4):
            daemon.start()
            time.sleep(1.0 + 0.5 * round_)
            if round_ == 2:
                s.slack.end_outage()
            daemon.kill()
        s.slack.end_outage()
        daemon.start()
        s.wait_idle(daemon, timeout=120)
        check_exactly_once(s.db, s.hub, s.slack, s.expected)
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.all_logs()


def test_sigterm_while_a_scan_finishes_stops_cleanly(tmp_path: Path, template: Template) -> None:
    """SIGTERM lands while a scan waits for the hub; the scan finishes (stop grace) with a new alert, so the
    drain wakes the delivery job during the shutdown: the daemon must still exit 0 within seconds."""
    with scene(tmp_path, template, uploads={"mirror/guard": "exact"}) as s:
        held = s.hub.faults.add(
            FaultRule(
                "GET", r"^/api/models/mirror/guard/revision/", FaultAction.delay(2.0), times=1, name="held"
            )
        )
        with running(s.daemon()) as daemon:
            daemon.start()
            wait_until(lambda: held.fired, timeout=60, what="the scan's model_info in flight")
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(timeout=15) == 0  # a clean stop takes about a second
        assert "stopped cleanly" in daemon.log()
        assert progress(s.db)["alerts"] == 1  # the scan did finish after the signal
