"""Health and metrics server: /livez, /readyz states over time, /metrics content, loopback-only binding."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobSubmissionEvent
from prometheus_client.parser import text_string_to_metric_families

from monitor.errors import ConfigError
from monitor.health import HealthServer, HealthState
from monitor.metrics import Metrics
from monitor.store.db import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def state(clock, metrics) -> HealthState:
    return HealthState(hubs={"huggingface": 300.0, "mirror": 60.0}, clock=clock, metrics=metrics)


@pytest.fixture
def server(state, metrics):
    with HealthServer(state, metrics, port=0) as srv:
        yield srv


def test_readiness_lifecycle(server, state, clock):
    status, body, _ = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body)["status"] == "waiting for the first successful poll"
    state.poll_finished("huggingface", ok=True)
    assert get(server.url + "/readyz")[0] == 503  # every hub must have polled
    state.poll_finished("mirror", ok=False, error="HTTP 502 from mirror")
    details = json.loads(get(server.url + "/readyz")[1])
    assert details["hubs"]["mirror"]["last_error"] == "HTTP 502 from mirror"
    state.poll_finished("mirror", ok=True)
    status, body, _ = get(server.url + "/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ready"
    clock.now += 119  # mirror: 2 × 60 s
    assert get(server.url + "/readyz")[0] == 200
    clock.now += 2
    status, body, _ = get(server.url + "/readyz")
    assert status == 503
    details = json.loads(body)
    assert details["status"] == "stale"
    assert details["hubs"]["mirror"]["ok"] is False
    assert details["hubs"]["huggingface"]["ok"] is True
    state.poll_finished("mirror", ok=True)
    assert get(server.url + "/readyz")[0] == 200
    state.stopping()
    status, body, _ = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body)["status"] == "stopping"


def test_liveness_follows_the_heartbeat(server, state, clock):
    status, body, headers = get(server.url + "/livez")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert headers["Cache-Control"] == "no-store"
    clock.now += 301
    assert get(server.url + "/livez")[0] == 503
    state.heartbeat()
    assert get(server.url + "/livez")[0] == 200


def test_metrics_endpoint_exposes_the_documented_names(tmp_path, server, state, metrics):
    with Store(tmp_path / "hs.db") as store:
        metrics.watch_store(store)
        state.poll_finished("huggingface", ok=True, at=1_800_000_123.0)
        state.poll_finished("huggingface", ok=False)
        metrics.record_scan("huggingface", seconds=2.5, bytes_read=4096)
        metrics.record_delivery("slack:#model-ip", severity="high")
        metrics.record_notify_failure("slack:#model-ip", reason="ratelimited")
        for code in (EVENT_JOB_ERROR, EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            metrics.on_scheduler_event(JobSubmissionEvent(code, "poll:huggingface", "default", []))
        status, body, headers = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    expected = {
        "hubsentry_polls",
        "hubsentry_last_successful_poll_timestamp_seconds",
        "hubsentry_fingerprint_duration_seconds",
        "hubsentry_bytes_read",
        "hubsentry_alerts_sent",
        "hubsentry_notify_failures",
        "hubsentry_job_errors",
        "hubsentry_job_missed",
        "hubsentry_job_skipped",
        "hubsentry_outbox_backlog",
        "hubsentry_outbox_dead",
        "hubsentry_work_items",
        "hubsentry_build_info",
    }
    assert expected <= set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("hubsentry_polls_total", (("hub", "huggingface"), ("outcome", "ok")))] == 1
    assert samples[("hubsentry_polls_total", (("hub", "huggingface"), ("outcome", "error")))] == 1
    assert (
        samples[("hubsentry_last_successful_poll_timestamp_seconds", (("hub", "huggingface"),))]
        == 1_800_000_123
    )
    assert samples[("hubsentry_bytes_read_total", (("hub", "huggingface"),))] == 4096
    assert samples[("hubsentry_job_skipped_total", (("job", "poll:huggingface"),))] == 1
    assert samples[("hubsentry_work_items", (("state", "pending"),))] == 0
    assert not any(name.endswith("_created") for name, _ in samples)


def test_store_gauges_survive_a_broken_store(tmp_path, metrics, caplog):
    with Store(tmp_path / "hs.db") as store:
        metrics.watch_store(store)
    (tmp_path / "hs.db").unlink()
    (tmp_path / "hs.db").write_bytes(b"not a database")
    assert metrics.registry.get_sample_value("hubsentry_work_items", {"state": "pending"}) is None
    assert "cannot read queue sizes" in caplog.text


def test_only_get_and_head(server):
    request = urllib.request.Request(server.url + "/readyz", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=5)
    assert exc.value.code == 405
    assert exc.value.headers["Allow"] == "GET, HEAD"
    head = urllib.request.Request(server.url + "/livez", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as response:
        assert response.status == 200
        assert response.read() == b""
    assert get(server.url + "/nope")[0] == 404
    assert json.loads(get(server.url + "/")[1])["endpoints"] == ["/livez", "/readyz", "/metrics"]


def test_binds_loopback_only(state, metrics):
    with pytest.raises(ConfigError, match="loopback"):
        HealthServer(state, metrics, host="0.0.0.0", port=0)
    with HealthServer(state, metrics, host="::1", port=0) as v6:
        assert v6.url.startswith("http://[::1]:")
        assert get(v6.url + "/livez")[0] == 200


def test_port_in_use_is_a_config_error(server, state, metrics):
    with pytest.raises(ConfigError, match="cannot listen"):
        HealthServer(state, metrics, port=server.port)


def test_invalid_poll_interval(metrics):
    with pytest.raises(ConfigError, match="poll_interval"):
        HealthState(hubs={"hf": 0.0})


def test_last_poll_time_is_reported_in_utc(state, clock):
    state.poll_finished("huggingface", ok=True)
    details = state.readiness()[1]["hubs"]["huggingface"]
    assert details["last_successful_poll"] == datetime.fromtimestamp(clock.now, UTC).isoformat(
        timespec="seconds"
    )


def test_concurrent_probes_and_scrapes(server, state):
    state.poll_finished("huggingface", ok=True)
    state.poll_finished("mirror", ok=True)
    results: list[int] = []
    lock = threading.Lock()

    def probe(path: str) -> None:
        status = get(server.url + path)[0]
        with lock:
            results.append(status)

    threads = [threading.Thread(target=probe, args=(p,)) for p in ["/livez", "/readyz", "/metrics"] * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 30
