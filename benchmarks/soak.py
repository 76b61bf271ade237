"""Soak test: the daemon for many minutes against a hub where thousands of repos appear, under faults and kills.

What runs (all on loopback, all real): a LocalHub and a LocalSlack in this process; the daemon as a subprocess
(``hubsentry run``, real scan pipeline, threads executor); a *publisher* that puts ``--repos`` tiny Llama uploads
on the hub over the first part of ``--duration`` (about 10 % fine-tunes of the protected model, 2 % byte-identical
copies, the rest independent models, a few of which later get a second commit); a *fault injector* that toggles
hub fault rules at random (5xx, connection resets, truncated bodies, 429 with ``RateLimit``/``Retry-After``, slow
API answers), Slack outages, 429 bursts, 5xx and resets after the post; and a *killer* that ``kill -9``s the daemon
at random moments and restarts it a moment later, as systemd would. After ``--duration`` the faults stop and the
run waits until the queue and the outbox are idle, then checks:

* every (repo, current commit) was processed exactly once: one work item, ``done`` (none missing, none dead);
* every derived or copied upload has exactly one alert and no independent upload has one;
* every alert reached Slack exactly once (by the alert key in the message metadata), in ``seq`` order;
* the hub never saw more than the configured ceilings in any 5-minute span, across all daemon processes;

and reports kills survived, faults injected per kind, duplicates, losses, p50/p99 latencies and request counts.
Exit status 0 only when nothing was lost or duplicated.

Usage::

    python -m benchmarks.soak --repos 2000 --duration 600            # the documented run (about 15 min)
    python -m benchmarks.soak --repos 100 --duration 60 --kill-every 15  # a quick look
    python -m benchmarks.soak ... --update-doc docs/reliability.md   # write the figures into the doc

Results: ``benchmarks/results/soak.json`` (``--out``), the Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from monitor.config import load_config
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.localhub.virtual_llama import LlamaShape, llama_tensor_specs
from monitor.localslack import LocalSlack
from monitor.registry import add as protect
from monitor.store import Store, connect, from_iso
from monitor.synth.export import save_hf_repo
from monitor.synth.models import LlamaConfig
from monitor.synth.text import WordVocab

__all__ = ["SoakSettings", "main", "run_soak"]

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
DOC_BEGIN, DOC_END = "<!-- soak:begin -->", "<!-- soak:end -->"
HF_TOKEN = "hf_soak_local_hub_token_5d2e"
SLACK_TOKEN = "xoxb-soak-local-slack-token-8c1f"
FP_SECRET = "soak-sampling-secret-61ab"
CHANNEL = "model-ip"
API_CEILING, RESOLVER_CEILING = 1000, 5000
"""The daemon's request ceilings per 5-minute window (the Hub's limits with a token)."""
PROTECTED = "acme/guard"
PROTECTED_SEED = 7
MODEL = LlamaConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


@dataclass(frozen=True)
class SoakSettings:
    """One soak run. Times in seconds; ``(low, high)`` pairs are drawn uniformly."""

    repos: int = 2000
    duration_s: float = 600.0
    seed: int = 1
    derived_fraction: float = 0.10
    exact_fraction: float = 0.02
    update_fraction: float = 0.03
    publish_fraction: float = 0.8
    kill_every_s: tuple[float, float] = (20.0, 60.0)
    restart_after_s: tuple[float, float] = (0.5, 3.0)
    fault_every_s: tuple[float, float] = (4.0, 12.0)
    fault_lasts_s: tuple[float, float] = (3.0, 15.0)
    slack_outages: int = 3
    settle_timeout_s: float = 1500.0
    workers: int = 2


# ---------------------------------------------------------------------------------------------- the world


def _vocab() -> WordVocab:
    return WordVocab.build([f"tok{i:04d}" for i in range(600) for _ in range(600 - i)], MODEL.vocab_size)


def _specs() -> list[tuple[str, list[int], dict[str, float]]]:
    shape = LlamaShape(
        d_model=MODEL.hidden_size,
        n_layers=MODEL.num_hidden_layers,
        d_ff=MODEL.intermediate_size,
        n_heads=MODEL.num_attention_heads,
        n_kv_heads=MODEL.num_key_value_heads,
        vocab=MODEL.vocab_size,
    )
    return [(t["name"], t["shape"], t["init"]) for t in llama_tensor_specs(shape)]


def model_state(seed: int, *, derived_from: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Fresh-initialisation weights, or ``derived_from`` plus 5 % noise (what a fine-tune looks like)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims, init in _specs():
        noise = init["std"] * rng.standard_normal(dims)
        base = derived_from[name] if derived_from is not None else init.get("mean", 0.0)
        out[name] = (base + (0.05 * noise if derived_from is not None else noise)).astype(np.float32)
    return out


class World:
    """The protected model (registered in a fresh database) and a hub folder to publish uploads into."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "hub"
        self.root.mkdir(parents=True, exist_ok=True)
        self.vocab = _vocab()
        self.protected = model_state(PROTECTED_SEED)
        self.protected_dir = save_hf_repo(
            workdir / "owner" / "guard", self.protected, MODEL, self.vocab, dtype="float16"
        )
        self.db = workdir / "hubsentry.db"
        self._staging = workdir / "staging"

    def register(self, config_path: Path) -> None:
        os.environ["HUBSENTRY_SECRET"] = FP_SECRET
        with Store(self.db) as store:
            protect(
                store,
                str(self.protected_dir),
                name=PROTECTED,
                owner="ip-team",
                config=load_config(config_path),
            )

    def publish(self, repo_id: str, kind: str, seed: int) -> None:
        if kind == "exact":
            write_repo(self.root, repo_id, {p.name: p for p in sorted(self.protected_dir.iterdir())})
            return
        state = model_state(seed, derived_from=self.protected if kind == "derived" else None)
        staging = save_hf_repo(self._staging / repo_id, state, MODEL, self.vocab, dtype="float16")
        write_repo(self.root, repo_id, {p.name: p for p in sorted(staging.iterdir())})

    def update(self, repo_id: str, n: int) -> None:
        write_repo(self.root, repo_id, {"README.md": f"revision {n}\n"})


def write_config(path: Path, *, db: Path, endpoint: str, slack_url: str, workers: int) -> Path:
    path.write_text(f"""\
[store]
path = "{db}"

[[hubs]]
name = "hf"
endpoint = "{endpoint}"
poll_interval = "3s"
jitter = "0s"
overlap = "30s"
initial_lookback = "1d"
token_env = "HF_TOKEN"
budget_per_repo = "4MiB"
api_requests_per_window = {API_CEILING}
resolver_requests_per_window = {RESOLVER_CEILING}
rate_window = "5m"
timeout = "5s"

[alerts.slack]
channel = "#{CHANNEL}"
token_env = "SLACK_BOT_TOKEN"
base_url = "{slack_url}"
timeout = "5s"

[fingerprint]
secret_env = "HUBSENTRY_SECRET"

[executor]
workers = {workers}

[server]
listen = ""

[queue]
max_attempts = 10
backoff_base = "2s"
backoff_max = "20s"
lease = "10s"
""")
    return path


# ---------------------------------------------------------------------------------------------- the actors


class Daemon:
    """``hubsentry run`` as a subprocess; every incarnation logs to its own file."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config, self.workdir = config, workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBSENTRY_", "SLACK_"))}
        self.env.update(
            HF_TOKEN=HF_TOKEN,
            SLACK_BOT_TOKEN=SLACK_TOKEN,
            HUBSENTRY_SECRET=FP_SECRET,
            HF_HOME=str(workdir / "hf-home"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnations = 0
        self.kills = 0
        self.spans: list[list[float]] = []  # [started, ended] wall-clock seconds per incarnation
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock, open(self.workdir / f"daemon-{self.incarnations}.log", "wb") as log:
            cmd = [sys.executable, "-m", "monitor", "--config", str(self.config), "run"]
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )
            self.incarnations += 1
            self.spans.append([time.time(), float("inf")])

    def kill(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                self.kills += 1
                self.spans[-1][1] = time.time()

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.spans[-1][1] = time.time()
        return code

    def logs(self) -> str:
        return "".join(
            (self.workdir / f"daemon-{i}.log").read_text(errors="replace") for i in range(self.incarnations)
        )


@dataclass
class Published:
    repo_id: str
    kind: str
    at: float
    updates: list[float] = field(default_factory=list)


class Publisher(threading.Thread):
    """Publishes every upload at its time, and a second commit for a few independent ones."""

    def __init__(self, world: World, settings: SoakSettings, stop: threading.Event) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self.world, self.settings, self.stop_event = world, settings, stop
        rng = random.Random(settings.seed)
        self.plan: list[tuple[float, str, str]] = []
        window = settings.duration_s * settings.publish_fraction
        for i in range(settings.repos):
            draw = rng.random()
            kind = (
                "derived"
                if draw < settings.derived_fraction
                else "exact"
                if draw < settings.derived_fraction + settings.exact_fraction
                else "independent"
            )
            org = {"derived": "thief", "exact": "mirror", "independent": "indie"}[kind]
            self.plan.append((window * i / settings.repos, f"{org}/model-{i:05d}", kind))
        independents = [repo for _, repo, kind in self.plan if kind == "independent"]
        self.to_update = set(rng.sample(independents, int(len(independents) * settings.update_fraction)))
        self.published: dict[str, Published] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        start = time.monotonic()
        for i, (offset, repo_id, kind) in enumerate(self.plan):
            if self.stop_event.wait(max(0.0, start + offset - time.monotonic())):
                return
            try:
                self.world.publish(repo_id, kind, seed=1000 + i)
            except OSError as exc:  # a full disk is the benchmark's problem, not the daemon's
                self.errors.append(f"{repo_id}: {exc}")
                continue
            self.published[repo_id] = Published(repo_id, kind, time.time())
            if i >= 50 and self.plan[i - 50][1] in self.to_update:  # a later commit, 50 uploads afterwards
                old = self.plan[i - 50][1]
                if old in self.published:
                    self.world.update(old, len(self.published[old].updates) + 1)
                    self.published[old].updates.append(time.time())


class FaultInjector(threading.Thread):
    """Turns hub fault rules and Slack faults on and off at random; keeps every rule for its counters."""

    HUB_FAULTS: ClassVar[dict[str, tuple[str | None, str, Callable[[], FaultAction], float]]] = {
        "hub 503": (None, r"^/api/models/|/resolve/", lambda: FaultAction.status(503), 0.3),
        "hub reset": (None, r"/resolve/|^/cdn/", FaultAction.reset, 0.3),
        "hub truncated body": ("GET", r"^/cdn/", lambda: FaultAction.truncate(64), 0.3),
        "hub wrong Content-Range": ("GET", r"^/cdn/", lambda: FaultAction.wrong_content_range(16), 0.3),
        "hub 429 with headers": ("GET", r"^/api/models/", lambda: FaultAction.rate_limited(reset_s=2), 0.2),
        "hub slow answer (timeout)": ("GET", r"^/api/models/", lambda: FaultAction.delay(6.0), 0.1),
        "hub listing 500": ("GET", r"^/api/models$", lambda: FaultAction.status(500), 0.5),
    }

    def __init__(
        self, hub: LocalHub, slack: LocalSlack, settings: SoakSettings, stop: threading.Event
    ) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.hub, self.slack, self.settings, self.stop_event = hub, slack, settings, stop
        self.rng = random.Random(settings.seed + 1)
        self.rules: list[tuple[str, FaultRule]] = []
        self.active: list[tuple[float, FaultRule]] = []
        self.slack_counts: Counter[str] = Counter()
        self.outages_left = settings.slack_outages
        self.last_outage_end = 0.0

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(*self.settings.fault_every_s)):
            self._expire()
            if self.rng.random() < 0.75:
                self._hub_fault()
            else:
                self._slack_fault()
        self.clear()

    def _hub_fault(self) -> None:
        kind = self.rng.choice(sorted(self.HUB_FAULTS))
        method, path, action, probability = self.HUB_FAULTS[kind]
        rule = FaultRule(
            method, path, action(), probability=probability, seed=self.rng.randrange(1 << 30), name=kind
        )
        self.rules.append((kind, rule))
        self.active.append((time.monotonic() + self.rng.uniform(*self.settings.fault_lasts_s), rule))
        self.hub.faults.add(rule)

    def _expire(self) -> None:
        now = time.monotonic()
        still = [(until, rule) for until, rule in self.active if until > now]
        if len(still) != len(self.active):
            self.hub.faults.clear()
            for _, rule in still:
                self.hub.faults.add(rule)
            self.active = still

    def _slack_fault(self) -> None:
        choice = self.rng.choice(["outage", "429 burst", "500", "reset after the post"])
        if choice == "outage" and self.outages_left > 0:
            self.outages_left -= 1
            seconds = self.rng.uniform(10, 40)
            self.slack.outage(until=time.time() + seconds, mode=self.rng.choice(["503", "reset"]))
            self.last_outage_end = time.time() + seconds
        elif choice == "429 burst":
            self.slack.fail(status=429, retry_after=self.rng.choice([1, 2, 5]), times=3)
        elif choice == "500":
            self.slack.fail(status=500, times=2)
        elif choice == "reset after the post":
            self.slack.reset(after_effect=True, times=1)
        else:
            return
        self.slack_counts[f"slack {choice}"] += 1

    def clear(self) -> None:
        self.hub.faults.clear()
        self.active = []
        self.slack.clear_faults()

    def fired(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for kind, rule in self.rules:
            counts[kind] += rule.fired
        return dict(sorted(counts.items()))


class Killer(threading.Thread):
    """kill -9 at random moments, restart after a short pause (systemd ``Restart=always``)."""

    def __init__(self, daemon: Daemon, settings: SoakSettings, stop: threading.Event) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.proc, self.settings, self.stop_event = daemon, settings, stop
        self.rng = random.Random(settings.seed + 2)

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(*self.settings.kill_every_s)):
            self.proc.kill()
            if self.stop_event.wait(self.rng.uniform(*self.settings.restart_after_s)):
                break
            self.proc.start()
        self.proc.ensure_running()


# ---------------------------------------------------------------------------------------------- checking


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = connect(db, readonly=True).conn
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _idle(db: Path, hub: LocalHub) -> bool:
    """Every current commit is done, nothing waits in the queue, and nothing waits in the outbox."""
    current = {(r.repo_id, r.commit) for r in hub.index.scan()}
    done = {
        (repo, commit)
        for repo, commit in _query(db, "SELECT repo_id, commit_sha FROM work_items WHERE state = 'done'")
    }
    busy = _query(db, "SELECT COUNT(*) FROM work_items WHERE state IN ('pending', 'running', 'failed')")[0][0]
    outbox = dict(_query(db, "SELECT state, COUNT(*) FROM outbox GROUP BY state"))
    return current <= done and busy == 0 and outbox.get("pending", 0) + outbox.get("sending", 0) == 0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.asarray(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "max": round(float(arr.max()), 2),
    }


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def check(db: Path, hub: LocalHub, slack: LocalSlack, published: dict[str, Published]) -> dict[str, Any]:
    """Compare the end state with what was published; every number the report shows."""
    current = {r.repo_id: r.commit for r in hub.index.scan()}
    rows = _query(
        db, "SELECT repo_id, commit_sha, state, attempts, listed_at, started_at, finished_at FROM work_items"
    )
    per_commit = Counter((repo, commit) for repo, commit, *_ in rows)
    state = {(repo, commit): s for repo, commit, s, *_ in rows}
    missing = sorted(
        f"{repo}@{commit[:12]}" for repo, commit in current.items() if state.get((repo, commit)) != "done"
    )
    alerting = {repo for repo, p in published.items() if p.kind in ("derived", "exact")}
    alerts = _query(db, "SELECT alert_key, seq, repo_id FROM alerts ORDER BY seq")
    alert_repos = Counter(repo for _, _, repo in alerts)
    keys = [m.alert_key for m in slack.messages(CHANNEL)]
    sent = Counter(keys)
    seq = {key: s for key, s, _ in alerts}
    order = [seq.get(k, -1) for k in keys]
    outbox = dict(_query(db, "SELECT state, COUNT(*) FROM outbox GROUP BY state"))
    scan_s, detect_s = [], []
    for repo, commit, s, _attempts, _listed, started, finished in rows:
        if s != "done" or current.get(repo) != commit or repo not in published:
            continue
        t_start, t_end = from_iso(started), from_iso(finished)
        if t_start and t_end:
            scan_s.append((t_end - t_start).total_seconds())
        if t_end:
            p = published[repo]
            detect_s.append(t_end.timestamp() - (p.updates[-1] if p.updates else p.at))
    alert_s = []
    by_key = {key: repo for key, _, repo in alerts}
    for message in slack.messages(CHANNEL):
        repo = by_key.get(message.alert_key or "")
        if repo in published:
            alert_s.append(float(message.ts) - published[repo].at)
    requests = Counter(r.bucket for r in hub.log)
    times = {b: [r.t for r in hub.log if r.bucket == b] for b in ("api", "resolvers")}
    window = {b: _max_in_window(t, 300.0) for b, t in times.items()}
    return {
        "repos_published": len(published),
        "commits_on_hub": len(current),
        "second_commits": sum(len(p.updates) for p in published.values()),
        "work_items": len(rows),
        "work_items_by_state": dict(Counter(row[2] for row in rows)),
        "scans_run": int(sum(r[3] for r in rows)),
        "lost_repos": missing,
        "duplicate_work_items": sum(n - 1 for n in per_commit.values() if n > 1),
        "alerts_expected": len(alerting),
        "alerts": len(alerts),
        "alerts_missing": sorted(alerting - set(alert_repos)),
        "alerts_unexpected": sorted(set(alert_repos) - alerting),
        "alerts_duplicated": sum(n - 1 for n in alert_repos.values() if n > 1),
        "slack_messages": len(keys),
        "slack_duplicates": sum(n - 1 for n in sent.values() if n > 1),
        "slack_lost": len(set(seq) - set(sent)),
        "slack_out_of_order": sum(1 for a, b in itertools.pairwise(order) if b < a),
        "outbox_by_state": outbox,
        "scan_seconds": _percentiles(scan_s),
        "publish_to_done_seconds": _percentiles(detect_s),
        "publish_to_slack_seconds": _percentiles(alert_s),
        "hub_requests": dict(requests),
        "max_requests_in_any_5min": window,
        "budget_held": window["api"] <= API_CEILING and window["resolvers"] <= RESOLVER_CEILING,
        "integrity_check": _query(db, "PRAGMA integrity_check")[0][0],
    }


# ---------------------------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hubsentry-soak-") as tmp:
        yield Path(tmp)


def run_soak(settings: SoakSettings, *, workdir: Path | None = None, log: Any = print) -> dict[str, Any]:
    """Run one soak and return its report (see the module docstring)."""
    t0 = time.monotonic()
    with _workdir(workdir) as work:
        world = World(work)
        with (
            LocalHub(world.root, token=HF_TOKEN) as hub,
            LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack,
        ):
            slack.rate_limit(1.0, burst=3)  # Slack's ~1 message per second per channel
            config = write_config(
                work / "hubsentry.toml",
                db=world.db,
                endpoint=hub.endpoint,
                slack_url=slack.base_url,
                workers=settings.workers,
            )
            world.register(config)
            daemon = Daemon(config, work)
            stop = threading.Event()
            publisher = Publisher(world, settings, stop)
            injector = FaultInjector(hub, slack, settings, stop)
            killer = Killer(daemon, settings, stop)
            daemon.start()
            for actor in (publisher, injector, killer):
                actor.start()
            log(f"soak: {settings.repos} repos over {settings.duration_s:.0f}s in {work}")
            deadline = time.monotonic() + settings.duration_s
            while time.monotonic() < deadline:
                time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
                log(
                    f"  t={time.monotonic() - t0:5.0f}s published {len(publisher.published)}, kills {daemon.kills}, {_progress(world.db)}"
                )
            stop.set()
            for actor in (publisher, injector, killer):
                actor.join(timeout=60)
            injector.clear()
            slack.end_outage()
            daemon.ensure_running()
            faults_stopped = time.monotonic()
            settle_deadline = time.monotonic() + settings.settle_timeout_s
            last_log = time.monotonic()
            while not _idle(world.db, hub) and time.monotonic() < settle_deadline:
                time.sleep(5)
                daemon.ensure_running()
                if time.monotonic() - last_log >= 60:
                    last_log = time.monotonic()
                    log(f"  settling {time.monotonic() - faults_stopped:5.0f}s: {_progress(world.db)}")
            settled_s = time.monotonic() - faults_stopped
            exit_code = daemon.stop()
            report = check(world.db, hub, slack, publisher.published)
            slack_errors = Counter(
                f"{r.method} {r.status} {r.error}" for r in slack.requests() if r.status != 200 or r.error
            )
            report |= {
                "settings": asdict(settings),
                "elapsed_s": round(time.monotonic() - t0, 1),
                "settle_s": round(settled_s, 1),
                "settled": _idle(world.db, hub),
                "kills_survived": daemon.kills,
                "daemon_starts": daemon.incarnations,
                "final_sigterm_exit": exit_code,
                "hub_faults_fired": injector.fired(),
                "slack_faults_injected": dict(injector.slack_counts),
                "slack_error_answers": dict(slack_errors.most_common()),
                "tracebacks_in_logs": daemon.logs().count("Traceback"),
                "publisher_errors": publisher.errors,
            }
    return report


def _progress(db: Path) -> str:
    try:
        items = dict(_query(db, "SELECT state, COUNT(*) FROM work_items GROUP BY state"))
        outbox = dict(_query(db, "SELECT state, COUNT(*) FROM outbox GROUP BY state"))
    except sqlite3.Error as exc:
        return f"(db busy: {exc})"
    return f"items {items}, outbox {outbox}"


def ok(report: dict[str, Any]) -> bool:
    """Nothing lost, nothing twice, everything in order."""
    return (
        report["settled"]
        and not report["lost_repos"]
        and report["duplicate_work_items"] == 0
        and not report["alerts_missing"]
        and not report["alerts_unexpected"]
        and report["alerts_duplicated"] == 0
        and report["slack_duplicates"] == 0
        and report["slack_lost"] == 0
        and report["slack_out_of_order"] == 0
        and report["integrity_check"] == "ok"
        and report["budget_held"]
    )


def markdown(report: dict[str, Any]) -> str:
    """The figures as the Markdown block of docs/reliability.md."""
    s = report["settings"]
    lines = [
        f"Run: `python -m benchmarks.soak --repos {s['repos']} --duration {s['duration_s']:.0f} --seed {s['seed']}` "
        f"(2-core shared VM, `nice -n 10`), {report['elapsed_s']:.0f} s in total, idle {report['settle_s']:.0f} s "
        "after the faults stopped.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| repos published / commits on the hub at the end | {report['repos_published']} / {report['commits_on_hub']} "
        f"({report['second_commits']} second commits) |",
        f"| work items / scans run (attempts) | {report['work_items']} / {report['scans_run']} |",
        f"| **repos lost** / duplicate work items | **{len(report['lost_repos'])}** / **{report['duplicate_work_items']}** |",
        f"| alerts expected / created / missing / unexpected / duplicated | {report['alerts_expected']} / "
        f"{report['alerts']} / {len(report['alerts_missing'])} / {len(report['alerts_unexpected'])} / "
        f"{report['alerts_duplicated']} |",
        f"| **Slack: messages / duplicates / lost / out of order** | {report['slack_messages']} / "
        f"**{report['slack_duplicates']}** / **{report['slack_lost']}** / **{report['slack_out_of_order']}** |",
        f"| kill -9 survived / daemon starts / final SIGTERM exit | {report['kills_survived']} / "
        f"{report['daemon_starts']} / {report['final_sigterm_exit']} |",
    ]
    for kind, n in {**report["hub_faults_fired"], **report["slack_faults_injected"]}.items():
        lines.append(f"| faults: {kind} | {n} |")
    for name, key in (
        ("scan duration (claim → done), s", "scan_seconds"),
        ("publish → done, s", "publish_to_done_seconds"),
        ("publish → Slack message, s", "publish_to_slack_seconds"),
    ):
        p = report[key]
        lines.append(f"| {name}: p50 / p99 / max | {p['p50']} / {p['p99']} / {p['max']} |")
    w = report["max_requests_in_any_5min"]
    lines += [
        f"| hub requests (api / resolvers / cdn) | {report['hub_requests'].get('api', 0)} / "
        f"{report['hub_requests'].get('resolvers', 0)} / {report['hub_requests'].get('cdn', 0)} |",
        f"| **most requests in any 5-minute span, all processes** (api / resolvers; ceilings "
        f"{API_CEILING} / {RESOLVER_CEILING}) | **{w['api']}** / **{w['resolvers']}** |",
    ]
    lines.append(
        f"| SQLite integrity check / tracebacks in daemon logs | {report['integrity_check']} / "
        f"{report['tracebacks_in_logs']} |"
    )
    return "\n".join(lines)


def update_doc(path: Path, block: str) -> None:
    text = path.read_text()
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    path.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of uploads, faults and kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(20.0, 60.0), metavar=("MIN", "MAX"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the hub, database and logs here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--update-doc", type=Path, default=None, help="write the figures into this Markdown file"
    )
    args = parser.parse_args(argv)
    settings = SoakSettings(
        repos=args.repos,
        duration_s=args.duration,
        seed=args.seed,
        kill_every_s=tuple(args.kill_every),
        workers=args.workers,
    )
    report = run_soak(settings, workdir=args.workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    block = markdown(report)
    print(block)
    if args.update_doc is not None:
        update_doc(args.update_doc, block)
    good = ok(report)
    print("soak: OK, nothing lost or duplicated" if good else "soak: FAILED, see the report", file=sys.stderr)
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
