"""Prometheus metrics of one HubSentry process, on its own registry.

Names follow Prometheus conventions (base units, ``_total`` counters, ``_timestamp_seconds`` gauges) and are
the contract for dashboards and alert rules, so they are listed once here and in ``docs/alerts.md``:

==============================================================  ==========================================
``hubsentry_polls_total{hub,outcome}``                           hub listing passes (``ok``/``error``)
``hubsentry_last_successful_poll_timestamp_seconds{hub}``        dead man's switch: alert when too old
``hubsentry_fingerprint_duration_seconds``                       histogram of one repo scan
``hubsentry_bytes_read_total{hub}``                              bytes read from hubs (partial reads)
``hubsentry_alerts_sent_total{sink,severity}``                   alerts delivered per sink
``hubsentry_notify_failures_total{sink,reason}``                 failed delivery attempts (``ratelimited``...)
``hubsentry_job_errors_total{job}``                              scheduler jobs that raised
``hubsentry_job_missed_total{job}``                              runs missed (misfire grace exceeded)
``hubsentry_job_skipped_total{job}``                             runs skipped (previous still running)
``hubsentry_outbox_backlog{sink}``                               undelivered outbox rows (read at scrape)
``hubsentry_outbox_dead{sink}``                                  dead letters: operator must act
``hubsentry_work_items{state}``                                  work queue by state (read at scrape)
``hubsentry_build_info{version,algo}``                           always 1; the labels carry the versions
==============================================================  ==========================================

Gauges that describe database state are computed at scrape time from the store (one short read), so they
are right even after a restart and no code path has to remember to update them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import prometheus_client
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import __version__
from monitor.findings import ALGO

__all__ = ["FINGERPRINT_BUCKETS", "POLL_OUTCOMES", "SCHEDULER_EVENT_MASK", "Metrics"]

logger = logging.getLogger(__name__)

FINGERPRINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""A scan is a few ranged reads plus some linear algebra: seconds normally, minutes on a slow hub."""
POLL_OUTCOMES = ("ok", "error")
SCHEDULER_EVENT_MASK = EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
"""Pass to ``scheduler.add_listener(metrics.on_scheduler_event, SCHEDULER_EVENT_MASK)``."""

_OUTBOX_STATES = ("pending", "sending", "delivered", "dead")
_WORK_STATES = ("pending", "running", "done", "failed", "dead")


class Metrics:
    """All HubSentry metrics on one `CollectorRegistry` (not the global one, so tests and several stores in
    one process never collide).

    Creating it disables prometheus_client's ``*_created`` series process-wide: they double the series count
    and no HubSentry alert rule uses them.

    Attributes:
        registry (`CollectorRegistry`): serve it with `monitor.health.HealthServer`.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        prometheus_client.disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.polls_total = Counter(
            "hubsentry_polls", "Hub listing passes by outcome.", ["hub", "outcome"], registry=r
        )
        self.last_successful_poll_timestamp_seconds = Gauge(
            "hubsentry_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful listing pass per hub.",
            ["hub"],
            registry=r,
        )
        self.fingerprint_duration_seconds = Histogram(
            "hubsentry_fingerprint_duration_seconds",
            "Wall time of one repo scan (reads, fingerprint, tests).",
            buckets=FINGERPRINT_BUCKETS,
            registry=r,
        )
        self.bytes_read_total = Counter(
            "hubsentry_bytes_read", "Bytes read from hubs by ranged requests.", ["hub"], registry=r
        )
        self.alerts_sent_total = Counter(
            "hubsentry_alerts_sent",
            "Alerts delivered, per sink and severity.",
            ["sink", "severity"],
            registry=r,
        )
        self.notify_failures_total = Counter(
            "hubsentry_notify_failures",
            "Failed alert delivery attempts, per sink and reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.job_errors_total = Counter(
            "hubsentry_job_errors", "Scheduler job runs that raised.", ["job"], registry=r
        )
        self.job_missed_total = Counter(
            "hubsentry_job_missed", "Scheduler runs missed by more than the grace time.", ["job"], registry=r
        )
        self.job_skipped_total = Counter(
            "hubsentry_job_skipped",
            "Scheduler runs skipped because the previous run was still going.",
            ["job"],
            registry=r,
        )
        self.build_info = Gauge(
            "hubsentry_build_info",
            "HubSentry version and algorithm version.",
            ["version", "algo"],
            registry=r,
        )
        self.build_info.labels(version=__version__, algo=ALGO).set(1)
        self._lock = threading.Lock()
        self._store_collector: _StoreCollector | None = None

    # ----------------------------------------------------------------------------------------- recorders

    def record_poll(self, hub: str, *, ok: bool, at: float) -> None:
        """Count one listing pass; a successful one also moves the dead man's switch timestamp."""
        self.polls_total.labels(hub=hub, outcome="ok" if ok else "error").inc()
        if ok:
            self.last_successful_poll_timestamp_seconds.labels(hub=hub).set(at)

    def record_scan(self, hub: str, *, seconds: float, bytes_read: int) -> None:
        """One finished repo scan: its duration and the bytes it read."""
        self.fingerprint_duration_seconds.observe(max(0.0, seconds))
        if bytes_read > 0:
            self.bytes_read_total.labels(hub=hub).inc(bytes_read)

    def record_delivery(self, sink: str, *, severity: str) -> None:
        self.alerts_sent_total.labels(sink=sink, severity=severity).inc()

    def record_notify_failure(self, sink: str, *, reason: str) -> None:
        self.notify_failures_total.labels(sink=sink, reason=reason).inc()

    def on_scheduler_event(self, event: Any) -> None:
        """APScheduler listener: branches on ``event.code`` (a max-instances event has no ``exception``)."""
        job = str(getattr(event, "job_id", "") or "unknown")
        if event.code == EVENT_JOB_ERROR:
            self.job_errors_total.labels(job=job).inc()
        elif event.code == EVENT_JOB_MISSED:
            self.job_missed_total.labels(job=job).inc()
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.job_skipped_total.labels(job=job).inc()

    # ----------------------------------------------------------------------------------- store gauges

    def watch_store(self, store: Any) -> None:
        """Compute ``hubsentry_outbox_backlog``, ``hubsentry_outbox_dead`` and ``hubsentry_work_items`` from
        ``store`` at every scrape (one read connection, two ``GROUP BY`` queries).

        Args:
            store: a `monitor.store.db.Store` (anything with a ``read()`` context manager yielding a
                sqlite-utils ``Database``).
        """
        with self._lock:
            if self._store_collector is not None:
                self.registry.unregister(self._store_collector)
            self._store_collector = _StoreCollector(store.read)
            self.registry.register(self._store_collector)


class _StoreCollector(Collector):
    """Scrape-time gauges read from the database; a failing read yields no samples and a warning."""

    def __init__(self, read: Callable[[], AbstractContextManager[Any]]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        backlog, dead, work = self._families()
        try:
            with self._read() as db:
                outbox_rows = list(
                    db.query("SELECT sink, state, count(*) AS n FROM outbox GROUP BY sink, state")
                )
                work_rows = list(db.query("SELECT state, count(*) AS n FROM work_items GROUP BY state"))
        except Exception as exc:  # a scrape must never raise; the gap in the series is the signal
            logger.warning("metrics: cannot read queue sizes from the store: %s", exc)
            return
        per_sink: dict[str, dict[str, int]] = {}
        for row in outbox_rows:
            per_sink.setdefault(row["sink"], dict.fromkeys(_OUTBOX_STATES, 0))[row["state"]] = int(row["n"])
        for sink, counts in sorted(per_sink.items()):
            backlog.add_metric([sink], counts["pending"] + counts["sending"])
            dead.add_metric([sink], counts["dead"])
        counts = dict.fromkeys(_WORK_STATES, 0)
        for row in work_rows:
            counts[row["state"]] = int(row["n"])
        for state, n in counts.items():
            work.add_metric([state], n)
        yield from (backlog, dead, work)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "hubsentry_outbox_backlog",
                "Alert deliveries not yet done (pending or sending).",
                labels=["sink"],
            ),
            GaugeMetricFamily(
                "hubsentry_outbox_dead", "Alert deliveries given up (operator must act).", labels=["sink"]
            ),
            GaugeMetricFamily("hubsentry_work_items", "Work queue items by state.", labels=["state"]),
        )
