"""The daemon (``hubsentry run``) and one foreground cycle (``hubsentry scan``).

Pattern (operations.md §1.4, measured): APScheduler 3.x ``BackgroundScheduler`` in UTC with a
``MemoryJobStore`` — the durable state is our own cursors and work queue, so a persistent job store
would add nothing but pickling and lock contention. Jobs:

* ``poll:<hub>`` per hub: ``IntervalTrigger(poll_interval, jitter)``, first run at start; walks the
  listings (`monitor.scanner.poll_hub`) and reports to readiness and metrics;
* ``drain``: processes due work items (`monitor.worker.Worker.drain`);
* ``deliver``: delivers the alert outbox (`monitor.alerts.delivery.deliver_due`, when installed).

The drain and deliver intervals (30 s, 15 s) are only a safety net: each run of those jobs ends by moving
its own next run forward to the moment its earliest waiting work becomes due (`Services.run_at`) — a failed
item's retry, a lease that expires, a Slack ``Retry-After`` — never sooner than `MIN_RERUN_S` after now and
only when that work is in the future or the run made progress, so a job can never spin on work it cannot
do. A poll that enqueued wakes the drain, a drain that created alerts wakes the delivery.

Job defaults: ``coalesce=True`` (a backlog of missed runs collapses into one), ``max_instances=1``,
``misfire_grace_time`` = the poll interval (APScheduler's 1 s default is its most-reported pitfall).
A listener counts ``EVENT_JOB_ERROR`` / ``MISSED`` / ``MAX_INSTANCES`` branching on ``event.code``
(a max-instances event has no ``exception``).

Shutdown: SIGTERM/SIGINT handlers only set a `threading.Event`; the main thread waits on it (sending
the systemd watchdog and the liveness heartbeat meanwhile), then calls ``shutdown(wait=True)``; jobs
check the event between items, so a stop takes seconds. A second signal only logs. systemd's
``Type=notify`` gets ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1`` (`sd_notify`, a no-op without
``NOTIFY_SOCKET``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config import Config, HubConfig, RuntimeEnv
from monitor.errors import ConfigError, StoreError
from monitor.executor import ExecutorHandle, LazyProcessor, build_executor
from monitor.hubs.base import HubSource
from monitor.scanner import PassReport, ScanPolicy, poll_hub
from monitor.secrets import resolve_secret
from monitor.store import Store, from_iso
from monitor.worker import DrainReport, Processor, RetryPolicy, Worker

__all__ = [
    "DEFAULT_PROCESSOR",
    "CycleReport",
    "Services",
    "alert_sinks",
    "build_hub",
    "build_scheduler",
    "build_services",
    "deliver_job",
    "drain_job",
    "load_processor_factory",
    "pipeline_processor",
    "poll_job",
    "run_cycle",
    "run_daemon",
    "sd_notify",
    "start_monitoring",
    "start_server",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

DEFAULT_PROCESSOR = "monitor.scheduler:pipeline_processor"
DRAIN_INTERVAL_S = 30.0
DELIVER_INTERVAL_S = 15.0
MIN_RERUN_S = 1.0
"""A job brought forward to its next due work never runs sooner than this after now (no busy loop)."""
HEARTBEAT_S = 5.0
EVENT_MASK = EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES

ProcessorFactory = Callable[..., Processor]
"""``factory(config, *, hubs=None) -> Processor``. With threads it gets the daemon's hub clients (one rate
limiter per hub, so scans and listings share the configured request budget, and the stop event); on Dask
it runs on the worker with ``hubs=None`` and builds its own clients there."""


# ---------------------------------------------------------------------------------------------- wiring


def pipeline_processor(config: Config, *, hubs: Mapping[str, HubSource] | None = None) -> Processor:
    """The production processor: the scan pipeline (`monitor.pipeline`) bound to its context.

    Runs once per worker process (see `monitor.executor.LazyProcessor`), so the context it builds
    (registry, sampling secret, and hub clients when ``hubs`` is not given) is never pickled.
    """
    try:
        pipeline = importlib.import_module("monitor.pipeline")
    except ImportError as exc:
        raise ConfigError(
            f"the scan pipeline (monitor.pipeline) is not available in this build: {exc}"
        ) from exc
    return functools.partial(pipeline.process, pipeline.build_context(config, hubs=hubs))


def load_processor_factory(spec: str) -> ProcessorFactory:
    """Import ``module:function``, a `ProcessorFactory` (``--processor``).

    Raises:
        `ConfigError`: the spec is malformed or names nothing importable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--processor: expected MODULE:FUNCTION, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--processor: cannot import {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"--processor: {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def build_hub(hub: HubConfig, *, stop: threading.Event | None = None) -> HubSource:
    """The client for one ``[[hubs]]`` entry, with its own rate limiter and the token it names.

    The limiter shares its request history through ``rate_state_file`` (when set), so every process built
    from this config on this host — the daemon across restarts, ``hubsentry scan``, Dask workers — stays
    inside the one configured ceiling. Close the client (`Services.close`) to hand its share back.
    """
    from monitor.hubs.huggingface import HuggingFaceSource
    from monitor.hubs.ratelimit import HubRateLimiter
    from monitor.hubs.ratestate import RateStateFile
    from monitor.remote.transport import DEFAULT_HTTP

    token = resolve_secret(hub.token)
    limiter = HubRateLimiter.default(
        authenticated=token is not None,
        api=hub.api_requests_per_window,
        resolvers=hub.resolver_requests_per_window,
        window_s=hub.rate_window_s,
        name=hub.name,
        state=RateStateFile(hub.rate_state_file) if hub.rate_state_file is not None else None,
    )
    return HuggingFaceSource(
        hub.name,
        hub.endpoint,
        token.reveal() if token is not None else None,
        limiter=limiter,
        http=dataclasses.replace(
            DEFAULT_HTTP,
            connect_timeout_s=min(DEFAULT_HTTP.connect_timeout_s, hub.timeout_s),
            read_timeout_s=hub.timeout_s,
        ),
        api_timeout_s=hub.timeout_s,
        allowed_storage_hosts=hub.allowed_storage_hosts,
        stop=stop,
    )


@dataclass
class Services:
    """Everything the jobs use, built once from the config (the jobs stay module-level functions).

    Attributes:
        sinks (`dict[str, Any]`): alert sinks by outbox sink name (empty: delivery not wired).
        metrics, health: `monitor.metrics.Metrics` / `monitor.health.HealthState`, or ``None``.
    """

    config: Config
    store: Store
    hubs: dict[str, HubSource]
    executor: ExecutorHandle
    worker: Worker
    stop: threading.Event
    sinks: dict[str, Any] = field(default_factory=dict)
    metrics: Any = None
    health: Any = None
    wake: Callable[[str, datetime], None] | None = None
    """Bring a job's next run forward to a moment (set by `build_scheduler`; never pushes it back)."""

    def wake_job(self, job_id: str) -> None:
        """Run ``job_id`` now: a poll that enqueued wakes ``drain``, a drain that created alerts wakes
        ``deliver``, so an alert leaves seconds after detection. Never blocks the calling job."""
        self._bring_forward(job_id, datetime.now(UTC))

    def run_at(self, job_id: str, when: datetime | None, *, progressed: bool) -> datetime | None:
        """Bring ``job_id``'s next run forward to ``when``, its earliest waiting work, if that is sooner than
        its interval; returns the moment asked for (None: nothing changed).

        Never sooner than `MIN_RERUN_S` from now; and work that is already due after a run that made no
        progress (``progressed=False``: a claim or send it could not do) waits for the interval, so a job
        cannot spin on it.
        """
        if when is None:
            return None
        now = datetime.now(UTC)
        if when <= now and not progressed:
            return None
        when = max(when, now + timedelta(seconds=MIN_RERUN_S))
        self._bring_forward(job_id, when)
        return when

    def _bring_forward(self, job_id: str, when: datetime) -> None:
        """Ask the scheduler, without ever blocking the calling job.

        ``scheduler.shutdown(wait=True)`` holds the scheduler's job-store lock while it waits for running
        jobs; a job calling ``modify_job`` then would wait for that lock forever and the stop would hang.
        So nothing is changed once the daemon is stopping, and the request runs on a short-lived daemon
        thread, which at worst waits for the shutdown to finish.
        """
        if self.wake is None or self.stop.is_set():
            return
        threading.Thread(
            target=self._apply, args=(job_id, when), name=f"hubsentry-wake-{job_id}", daemon=True
        ).start()

    def _apply(self, job_id: str, when: datetime) -> None:
        assert self.wake is not None
        try:
            self.wake(job_id, when)
        except Exception as exc:  # the job may be gone during shutdown; its interval still runs it
            log.debug("rescheduling %s failed: %s", job_id, exc)

    def close(self) -> None:
        """Stop the executor (waits for running scans), the hub clients (their rate-limit state is saved,
        see `monitor.hubs.ratestate`), then the store (finishes queued writes)."""
        self.executor.close()
        for hub in self.hubs.values():
            close = getattr(hub, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # one hub's failure must not keep the store from closing
                    log.exception("closing hub %s failed", getattr(hub, "name", "?"))
        self.store.close()


def build_services(
    config: Config,
    *,
    processor_factory: ProcessorFactory,
    stop: threading.Event,
    sinks: Mapping[str, Any] | None = None,
    metrics: Any = None,
    health: Any = None,
) -> Services:
    """Open the store, build hub clients, the executor and the worker.

    On Dask the processor is wrapped in `LazyProcessor` (built on the worker from the config alone); on
    threads it is built here once, with these hub clients.
    """
    store = Store(config.store.path, busy_timeout_s=config.store.busy_timeout_s)
    try:
        hubs = {hub.name: build_hub(hub, stop=stop) for hub in config.hubs}
        executor = build_executor(config.executor)
    except BaseException:
        store.close()
        raise
    try:
        if executor.kind == "dask":
            processor: Processor = LazyProcessor(processor_factory, config)
        else:
            processor = processor_factory(config, hubs=hubs)
    except BaseException:
        executor.close()
        store.close()
        raise
    on_scan = None
    if metrics is not None:
        on_scan = lambda outcome: metrics.record_scan(  # noqa: E731 - a one-line adapter
            outcome.hub, seconds=outcome.elapsed_s, bytes_read=outcome.bytes_read
        )
    worker = Worker(
        store,
        processor,
        executor.executor,
        retry=RetryPolicy.from_config(config.queue),
        sinks=config.alerts.sinks,
        min_verdict=config.alerts.min_verdict,
        lease_s=config.queue.lease_s,
        item_timeout_s=config.queue.item_timeout_s,
        max_in_flight=executor.workers * 2,
        hubs=hubs,
        on_scan=on_scan,
    )
    return Services(config, store, hubs, executor, worker, stop, dict(sinks or {}), metrics, health)


def alert_sinks(config: Config) -> dict[str, Any]:
    """Alert sinks from ``[alerts]`` (`monitor.alerts.sinks.build_sinks`), or none if not installed.

    Raises:
        `ConfigError`: a configured sink cannot be built (e.g. the Slack token is not set).
    """
    try:
        from monitor.alerts.sinks import build_sinks as build
    except ImportError:
        log.warning("alert delivery (monitor.alerts) is not available; alerts stay in the outbox")
        return {}
    return build(config.alerts)


def start_monitoring(config: Config) -> tuple[Any, Any]:
    """``(metrics, health state)`` for the daemon (`monitor.metrics`, `monitor.health`)."""
    from monitor.health import HealthState
    from monitor.metrics import Metrics

    metrics = Metrics()
    health = HealthState(hubs={hub.name: hub.poll_interval_s for hub in config.hubs}, metrics=metrics)
    return metrics, health


def start_server(config: Config, services: Services) -> Any:
    """Serve ``/livez`` ``/readyz`` ``/metrics`` on ``[server] listen`` (None when disabled)."""
    if not config.server.enabled or services.health is None or services.metrics is None:
        return None
    from monitor.health import HealthServer

    services.metrics.watch_store(services.store)
    return HealthServer(
        services.health,
        services.metrics,
        host=config.server.host,
        port=config.server.port,
        allow_non_loopback=config.server.allow_non_loopback,
    ).start()


# ---------------------------------------------------------------------------------------------- jobs


def poll_job(services: Services, hub_name: str) -> list[PassReport]:
    """Walk one hub's listings; report the outcome to readiness and metrics."""
    hub = services.hubs[hub_name]
    reports = poll_hub(
        services.store, hub, policy=ScanPolicy.from_config(services.config.hub(hub_name)), stop=services.stop
    )
    if not reports or any(r.stopped for r in reports):
        return reports
    errors = [f"{r.sort}: {r.error}" for r in reports if r.error]
    ok = not errors
    if services.health is not None:
        services.health.poll_finished(hub_name, ok=ok, error="; ".join(errors) or None)
    elif services.metrics is not None:
        services.metrics.record_poll(hub_name, ok=ok, at=datetime.now(UTC).timestamp())
    if any(r.enqueued for r in reports):
        services.wake_job("drain")
    return reports


def drain_job(services: Services) -> DrainReport:
    """Process every due work item (stops between items when the daemon stops), then run again when the
    next item becomes claimable (a retry, an expiring lease) if that is before the next interval."""
    report = services.worker.drain(stop=services.stop)
    if report.new_alerts and services.sinks:
        services.wake_job("deliver")
    if not services.stop.is_set():
        try:
            due = services.worker.next_due()
        except StoreError as exc:  # the interval still runs the drain
            log.warning("cannot read when the next work item is due: %s", exc)
            due = None
        services.run_at("drain", due, progressed=report.claimed > 0)
    return report


def deliver_job(services: Services) -> Any:
    """Deliver due outbox rows through the configured sinks (no-op without delivery or sinks), then run
    again when the earliest blocked row may be retried (e.g. after Slack's ``Retry-After``)."""
    if not services.sinks:
        return None
    try:
        from monitor.alerts.delivery import deliver_due
    except ImportError:
        return None
    report = deliver_due(services.store, services.sinks, services.stop, metrics=services.metrics)
    due = getattr(report, "next_attempt_at", None)
    if due is not None and not services.stop.is_set():
        services.run_at("deliver", from_iso(due), progressed=report.anything)
    return report


# ---------------------------------------------------------------------------------------------- one cycle


@dataclass
class CycleReport:
    """What ``hubsentry scan`` did: listing passes, the drain, and the delivery run."""

    passes: list[PassReport]
    drain: DrainReport
    delivery: Any = None

    @property
    def ok(self) -> bool:
        """Every pass and item succeeded (``scan`` exits 0), else 1."""
        return all(p.ok for p in self.passes) and self.drain.ok

    def to_dict(self) -> dict[str, Any]:
        passes = [
            {
                "hub": p.hub,
                "sort": p.sort,
                "seen": p.seen,
                "enqueued": p.enqueued,
                "known": p.known,
                "complete": p.complete,
                "error": p.error,
                "item_errors": p.item_errors,
            }
            for p in self.passes
        ]
        d = self.drain
        drain = {
            "claimed": d.claimed,
            "done": d.done,
            "noted": d.noted,
            "retried": d.retried,
            "dead": d.dead,
            "released": d.released,
            "timed_out": d.timed_out,
            "new_alerts": d.new_alerts,
        }
        delivery = getattr(self.delivery, "__dict__", None) if self.delivery is not None else None
        return {"ok": self.ok, "passes": passes, "drain": drain, "delivery": delivery}


def run_cycle(services: Services) -> CycleReport:
    """One foreground cycle: poll every hub, process every due item, deliver the outbox."""
    passes: list[PassReport] = []
    for hub in services.config.hubs:
        if services.stop.is_set():
            break
        passes += poll_job(services, hub.name)
    drain = DrainReport() if services.stop.is_set() else drain_job(services)
    delivery = None if services.stop.is_set() else deliver_job(services)
    return CycleReport(passes, drain, delivery)


# ---------------------------------------------------------------------------------------------- daemon


def sd_notify(message: str, *, socket_path: str | None) -> bool:
    """Send one systemd notification (``READY=1``, ``WATCHDOG=1``...); no-op without a socket.

    ``socket_path`` comes from ``NOTIFY_SOCKET``; a leading ``@`` is Linux's abstract namespace.
    Returns whether a datagram was sent; errors are logged, never raised.
    """
    if not socket_path:
        return False
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("=")[0], exc)
        return False
    return True


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` and do nothing else (a second one is logged); handlers restored after."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if stop.is_set():
            log.warning("%s again: already stopping", signal.Signals(signum).name)
        else:
            log.info("%s received: stopping after the current items", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _listener(metrics: Any) -> Callable[[JobEvent], None]:
    def on_event(event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run time (the process was busy or suspended)", event.job_id)
        elif event.code == EVENT_JOB_ERROR:
            log.error("job %s failed; it stays scheduled", event.job_id)
        if metrics is not None:
            metrics.on_scheduler_event(event)

    return on_event


def build_scheduler(services: Services, *, now: datetime | None = None) -> BackgroundScheduler:
    """The configured (not started) scheduler with one poll job per hub, the drain and the delivery."""
    config = services.config
    start = now or datetime.now(UTC)
    grace = int(max(hub.poll_interval_s for hub in config.hubs))
    scheduler = BackgroundScheduler(
        timezone="UTC",
        daemon=False,
        jobstores={"default": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
    )
    for hub in config.hubs:
        scheduler.add_job(
            poll_job,
            IntervalTrigger(seconds=hub.poll_interval_s, jitter=hub.jitter_s or None, timezone=UTC),
            args=[services, hub.name],
            id=f"poll:{hub.name}",
            name=f"poll {hub.name}",
            next_run_time=start,
            misfire_grace_time=int(hub.poll_interval_s),
            replace_existing=True,
        )
    scheduler.add_job(
        drain_job,
        IntervalTrigger(seconds=DRAIN_INTERVAL_S, timezone=UTC),
        args=[services],
        id="drain",
        name="drain work queue",
        next_run_time=start + timedelta(seconds=1),
        replace_existing=True,
    )
    if services.sinks:
        scheduler.add_job(
            deliver_job,
            IntervalTrigger(seconds=DELIVER_INTERVAL_S, timezone=UTC),
            args=[services],
            id="deliver",
            name="deliver alerts",
            next_run_time=start + timedelta(seconds=2),
            replace_existing=True,
        )
    scheduler.add_listener(_listener(services.metrics), EVENT_MASK)
    lock = threading.Lock()

    def bring_forward(job_id: str, when: datetime) -> None:
        with lock:  # read-compare-write of the next run time, so a later request never undoes a sooner one
            job = scheduler.get_job(job_id)
            if job is not None and job.next_run_time is not None and when < job.next_run_time:
                scheduler.modify_job(job_id, next_run_time=when)

    services.wake = bring_forward
    return scheduler


def run_daemon(services: Services, *, runtime: RuntimeEnv, server: Any = None) -> int:
    """Run until ``services.stop`` is set (by a signal), then shut down cleanly; returns the exit code.

    Args:
        runtime (`RuntimeEnv`): systemd notification socket and watchdog period.
        server: a started health server (`monitor.health.HealthServer`) to stop at the end, or None.
    """
    scheduler = build_scheduler(services)
    watchdog_s = runtime.watchdog_usec / 2e6 if runtime.watchdog_usec else None
    tick = min(HEARTBEAT_S, watchdog_s) if watchdog_s else HEARTBEAT_S
    scheduler.start()
    log.info(
        "hubsentry running: %d hub(s) (%s), store %s, %s executor with %d worker(s)",
        len(services.hubs),
        ", ".join(services.hubs),
        services.store.path,
        services.executor.kind,
        services.executor.workers,
    )
    sd_notify("READY=1", socket_path=runtime.notify_socket)
    try:
        while not services.stop.wait(timeout=tick):
            if services.health is not None:
                services.health.heartbeat()
            if watchdog_s:
                sd_notify("WATCHDOG=1", socket_path=runtime.notify_socket)
    finally:
        log.info("stopping: waiting for running jobs")
        services.stop.set()
        if services.health is not None:
            services.health.stopping()
        sd_notify("STOPPING=1", socket_path=runtime.notify_socket)
        scheduler.shutdown(wait=True)
        services.close()
        if server is not None:
            server.stop()
    log.info("stopped cleanly")
    return 0
