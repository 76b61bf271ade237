"""The daemon and one cycle: scheduler shape, listener, sd_notify, a full cycle, and SIGTERM in a subprocess.

Everything runs against real local servers: LocalHub (the Hugging Face API) and LocalSlack (the Slack Web
API), with the real clients. `make_processor` is a small real processor that reads each repo's
``config.json`` through the hub with ranged reads and decides from its content.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent, JobSubmissionEvent
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config import Config, load_config
from monitor.errors import TransientHubError
from monitor.findings import Finding, ScanOutcome
from monitor.hubs.base import HubSource
from monitor.localhub import LocalHub, write_repo
from monitor.localslack import LocalSlack
from monitor.metrics import Metrics
from monitor.scheduler import (
    Services,
    alert_sinks,
    build_hub,
    build_scheduler,
    build_services,
    load_processor_factory,
    run_cycle,
    sd_notify,
)
from monitor.scheduler import _listener as scheduler_listener
from monitor.store import Store, WorkItem, list_alerts, list_items
from monitor.worker import Processor

REPO = Path(__file__).resolve().parents[1]
HF_TOKEN = "hf_sEcReT_hub_token_0123456789"
SLACK_TOKEN = "xoxb-sEcReT-slack-token-0123456789"
FP_SECRET = "fp-sEcReT-sampling-seed-0123456789"


def make_processor(config: Config, *, hubs: Mapping[str, HubSource] | None = None) -> Processor:
    """A small real processor: reads ``config.json`` of each repo through the hub and decides from it."""
    hubs = hubs or {hub.name: build_hub(hub) for hub in config.hubs}

    def process(item: WorkItem) -> ScanOutcome:
        hub = hubs[item.hub]
        snapshot = hub.snapshot(item.repo_id, item.commit_sha)
        files = hub.open_files(snapshot, budget=config.hub(item.hub).budget_per_repo)
        source = files.open("config.json")
        doc = json.loads(source.read(0, source.size))
        if doc.get("fail") or (doc.get("fail_first") and item.attempts == 1):
            raise TransientHubError("upstream hiccup")
        findings: tuple[Finding, ...] = ()
        if doc.get("copy_of"):
            findings = (
                Finding(
                    protected=doc["copy_of"],
                    owner="ip-team",
                    verdict="derived",
                    p_value=1e-30,
                    log10_p=-30.0,
                    null="independent training",
                    transform="identity",
                    matched="config.json copied",
                ),
            )
        return ScanOutcome(
            hub=item.hub,
            repo_id=item.repo_id,
            commit=item.commit_sha,
            url=hub.commit_url(item.repo_id, item.commit_sha),
            findings=findings,
            bytes_read=files.stats.bytes_read,
            requests=files.stats.requests,
        )

    return process


def write_config(
    path: Path,
    *,
    endpoint: str,
    slack_url: str,
    db: Path,
    listen: str = "",
    poll_interval: str = "2s",
    queue: str = "",
) -> Path:
    path.write_text(f"""
[store]
path = "{db}"
[[hubs]]
name = "hf"
endpoint = "{endpoint}"
poll_interval = "{poll_interval}"
jitter = "0s"
initial_lookback = "1d"
[alerts.slack]
channel = "#model-ip"
base_url = "{slack_url}"
[server]
listen = "{listen}"
[queue]
lease = "30s"
{queue}
""")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"HF_TOKEN": HF_TOKEN, "SLACK_BOT_TOKEN": SLACK_TOKEN, "HUBSENTRY_SECRET": FP_SECRET}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, LocalHub, LocalSlack]]:
    root = tmp_path / "hub"
    write_repo(root, "acme/guard", {"config.json": {"hidden_size": 64}})
    write_repo(root, "thief/guard-copy", {"config.json": {"hidden_size": 64, "copy_of": "acme/guard"}})
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=["model-ip"]) as slack:
        yield root, hub, slack


def test_sd_notify_plain_and_abstract_sockets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "notify.sock")
    abstract = f"@hubsentry-test-{os.getpid()}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as plain,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as hidden,
    ):
        plain.bind(path)
        hidden.bind("\0" + abstract[1:])
        assert sd_notify("READY=1", socket_path=path)
        assert sd_notify("WATCHDOG=1", socket_path=abstract)
        assert plain.recv(100) == b"READY=1"
        assert hidden.recv(100) == b"WATCHDOG=1"
    assert not sd_notify("READY=1", socket_path=None)
    assert not sd_notify("READY=1", socket_path=str(tmp_path / "nobody-listens"))
    assert "sd_notify(READY) failed" in caplog.text


def test_scheduler_has_one_poll_job_per_hub_and_safe_defaults(tmp_path: Path, served, env) -> None:
    _, hub, slack = served
    config = load_config(
        write_config(
            tmp_path / "c.toml", endpoint=hub.endpoint, slack_url=slack.base_url, db=tmp_path / "h.db"
        )
    )
    stop = threading.Event()
    services = build_services(config, processor_factory=make_processor, stop=stop, sinks=alert_sinks(config))
    try:
        now = datetime(2026, 11, 20, tzinfo=UTC)
        scheduler = build_scheduler(services, now=now)
        scheduler.start(paused=True)  # job defaults are applied when the scheduler starts
        jobs = {job.id: job for job in scheduler.get_jobs()}
        scheduler.shutdown(wait=False)
        assert set(jobs) == {"poll:hf", "drain", "deliver"}
        poll = jobs["poll:hf"]
        assert isinstance(poll.trigger, IntervalTrigger)
        assert poll.trigger.interval.total_seconds() == 2
        assert poll.next_run_time == now
        assert (poll.coalesce, poll.max_instances, poll.misfire_grace_time) == (True, 1, 2)
        assert str(scheduler.timezone) == "UTC"
        assert scheduler._daemon is False
    finally:
        services.close()


def test_listener_counts_errors_and_skips_by_event_code(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    listener = scheduler_listener(metrics)
    now = datetime.now(UTC)
    listener(JobExecutionEvent(EVENT_JOB_ERROR, "poll:hf", "default", now, exception=ValueError("x")))
    listener(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "drain", "default", [now]))  # has no .exception
    text = metrics_text(metrics)
    assert 'hubsentry_job_errors_total{job="poll:hf"} 1.0' in text
    assert 'hubsentry_job_skipped_total{job="drain"} 1.0' in text
    assert "job poll:hf failed" in caplog.text


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_one_cycle_scans_alerts_and_delivers(tmp_path: Path, served, env) -> None:
    root, hub, slack = served
    config = load_config(
        write_config(
            tmp_path / "c.toml", endpoint=hub.endpoint, slack_url=slack.base_url, db=tmp_path / "h.db"
        )
    )
    stop = threading.Event()
    services = build_services(config, processor_factory=make_processor, stop=stop, sinks=alert_sinks(config))
    try:
        first = run_cycle(services)
        assert first.ok
        assert first.drain.done == 2
        assert len(first.drain.new_alerts) == 1
        assert first.delivery is not None
        assert first.delivery.delivered == 2  # slack + log
        (message,) = slack.messages("model-ip")
        assert "thief/guard-copy" in message.text
        second = run_cycle(services)
        assert second.ok
        assert second.drain.claimed == 0
        write_repo(root, "flaky/model", {"config.json": {"fail": True}})
        third = run_cycle(services)
        assert not third.ok
        assert third.drain.retried == 1
        assert json.loads(json.dumps(third.to_dict()))["drain"]["retried"] == 1
    finally:
        services.close()
    with Store(config.store.path) as store, store.read() as db:
        assert {i.repo_id: i.state for i in list_items(db)} == {
            "acme/guard": "done",
            "thief/guard-copy": "done",
            "flaky/model": "failed",
        }
        assert len(list_alerts(db)) == 1


@contextlib.contextmanager
def scheduled(config: Config) -> Iterator[Services]:
    """The daemon's scheduler and jobs, in this process, until the block ends."""
    stop = threading.Event()
    services = build_services(config, processor_factory=make_processor, stop=stop, sinks=alert_sinks(config))
    scheduler = build_scheduler(services)
    scheduler.start()
    try:
        yield services
    finally:
        stop.set()
        scheduler.shutdown(wait=True)
        services.close()


def test_a_failed_item_is_retried_when_due_not_at_the_next_drain_interval(
    tmp_path: Path, served, env
) -> None:
    """The drain runs again when the earliest retry is due (here within 1 s), not 30 s later; and it does
    not spin meanwhile."""
    root, hub, slack = served
    write_repo(root, "flaky/once", {"config.json": {"fail_first": True}})
    config = load_config(
        write_config(
            tmp_path / "c.toml",
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            db=tmp_path / "h.db",
            poll_interval="1h",  # one poll at start: nothing else wakes the drain
            queue='backoff_base = "1s"\nbackoff_max = "1s"',
        )
    )

    def flaky() -> Any:
        with Store(config.store.path) as store, store.read() as db:
            return {i.repo_id: i for i in list_items(db)}.get("flaky/once")

    started = time.monotonic()
    with scheduled(config):
        wait_for(lambda: (item := flaky()) is not None and item.state == "done", timeout=10, what="the retry")
        took = time.monotonic() - started
        time.sleep(2)  # idle: the drain must not run in a loop now that nothing is due
    item = flaky()
    assert (item.attempts, item.last_error) == (2, None)
    assert took < 10  # the drain interval is 30 s
    drains = [r for r in hub.log if r.path.startswith("/api/models/flaky/once")]
    assert len(drains) == 2


def test_slack_rate_limit_is_waited_out_in_seconds(tmp_path: Path, served, env) -> None:
    """Slack answers 429 with Retry-After: 1 to every post beyond one per second: the delivery job runs
    again after that second, so six alerts take about six seconds, not six delivery intervals (90 s)."""
    root, hub, slack = served
    for i in range(5):
        write_repo(root, f"thief/copy-{i}", {"config.json": {"copy_of": "acme/guard", "i": i}})
    slack.rate_limit(1.0, burst=1)
    config = load_config(
        write_config(
            tmp_path / "c.toml",
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            db=tmp_path / "h.db",
            poll_interval="1h",
        )
    )
    with scheduled(config):
        wait_for(lambda: len(slack.messages("model-ip")) == 6, timeout=20, what="six Slack messages")
    posts = slack.requests("chat.postMessage")
    assert any(r.status == 429 for r in posts)  # the limit did push back
    delivered = [r.at for r in posts if r.status == 200]
    assert delivered[-1] - delivered[0] < 10


def test_processor_spec_errors_are_config_errors() -> None:
    from monitor.errors import ConfigError

    for spec in ("nocolon", "no_such_module_xyz:f", "json:no_such_function", "json:__doc__"):
        with pytest.raises(ConfigError, match="--processor"):
            load_processor_factory(spec)
    assert load_processor_factory("test_scheduler:make_processor") is make_processor


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBSENTRY_", "SLACK_"))}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HOME"] = os.environ["HF_HOME"]
    return env


def wait_for(condition, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_runs_alerts_and_stops_cleanly_on_sigterm_twice(tmp_path: Path, served, env) -> None:
    _, hub, slack = served
    db = tmp_path / "daemon.db"
    config = write_config(
        tmp_path / "c.toml", endpoint=hub.endpoint, slack_url=slack.base_url, db=db, listen="127.0.0.1:0"
    )
    notify_path = str(tmp_path / "notify.sock")
    notifications: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(0.1)
        stderr_path = tmp_path / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monitor",
                    "--config",
                    str(config),
                    "--log-level",
                    "debug",
                    "run",
                    "--processor",
                    "test_scheduler:make_processor",
                ],
                cwd=tmp_path,
                env=child_env({**env, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"}),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            wait_for(lambda: len(slack.messages("model-ip")) == 1, timeout=60, what="the Slack alert")
            log_text = stderr_path.read_text()
            port = re.search(r"health and metrics on http://127\.0\.0\.1:(\d+)", log_text)
            assert port is not None, log_text
            base = f"http://127.0.0.1:{port.group(1)}"
            wait_for(
                lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200,
                timeout=10,
                what="/readyz",
            )
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=2).read().decode()
            assert 'hubsentry_polls_total{hub="hf",outcome="ok"}' in metrics
            assert 'hubsentry_work_items{state="done"} 2.0' in metrics

            def watchdog_seen() -> bool:
                with contextlib.suppress(TimeoutError):
                    notifications.append(notify.recv(100))
                return b"WATCHDOG=1" in notifications

            wait_for(watchdog_seen, timeout=10, what="a systemd watchdog ping")
            child.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            child.send_signal(signal.SIGTERM)  # a second signal must not crash the shutdown
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
        while True:
            try:
                notifications.append(notify.recv(100))
            except TimeoutError:
                break
    log_text = stderr_path.read_text()
    assert "SIGTERM received" in log_text
    assert "already stopping" in log_text
    assert "stopped cleanly" in log_text
    assert "Traceback" not in log_text
    assert notifications[0] == b"READY=1"
    assert b"WATCHDOG=1" in notifications
    assert notifications[-1] == b"STOPPING=1"
    for secret in (HF_TOKEN, SLACK_TOKEN, FP_SECRET):  # never in logs, never in the database
        assert secret not in log_text
        for file in tmp_path.glob("daemon.db*"):
            assert secret.encode() not in file.read_bytes()
    with Store(db) as store, store.read() as conn:
        assert {i.state for i in list_items(conn)} == {"done"}
        assert {r["state"] for r in conn.query("SELECT state FROM outbox")} == {"delivered"}


def test_services_close_is_safe_when_a_build_step_fails(tmp_path: Path, env) -> None:
    config = load_config(
        write_config(
            tmp_path / "c.toml", endpoint="http://127.0.0.1:9", slack_url="http://x/", db=tmp_path / "h.db"
        )
    )

    def broken(_: Config, **__: object) -> Processor:
        raise RuntimeError("cannot build")

    with pytest.raises(RuntimeError, match="cannot build"):
        build_services(config, processor_factory=broken, stop=threading.Event())
    with Store(tmp_path / "h.db") as store:  # the store was closed: it opens again at once
        assert isinstance(store, Store)
    assert Services is not None


def test_deployment_files_match_the_daemon(env) -> None:
    """The unit, image and compose file keep the properties the daemon relies on."""
    import tomllib

    import yaml

    from monitor.config import parse_config

    unit = (REPO / "deploy/systemd/hubsentry.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert (settings["Type"], settings["NotifyAccess"], settings["KillMode"]) == ("notify", "main", "mixed")
    assert settings["ExecStart"].endswith(" run")
    assert settings["TimeoutStopSec"] == "60s"  # above the worker's 20 s stop grace
    assert settings["DynamicUser"] == "yes"
    assert "MemoryDenyWriteExecute" not in settings  # torch JITs into W+X memory

    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    assert 'ENTRYPOINT ["tini", "--", "hubsentry"]' in dockerfile  # exec form: SIGTERM reaches the daemon
    assert "USER 10001:10001" in dockerfile
    assert '"torch==2.13.0"' in dockerfile

    compose = yaml.safe_load((REPO / "deploy/docker/docker-compose.yml").read_text())
    service = compose["services"]["hubsentry"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert (service["read_only"], service["cap_drop"], service["user"]) == (True, ["ALL"], "10001:10001")
    container = load_config(REPO / "deploy/docker/config.toml")
    assert container.server.allow_non_loopback
    assert all(h.token is not None and h.token.file is not None for h in container.hubs)

    values = yaml.safe_load((REPO / "deploy/helm/hubsentry/values.yaml").read_text())
    helm = parse_config(tomllib.loads(values["config"]))
    assert str(helm.store.path).startswith("/var/lib/hubsentry/")
    deployment = (REPO / "deploy/helm/hubsentry/templates/deployment.yaml").read_text()
    assert "replicas: 1" in deployment
    assert "type: Recreate" in deployment
