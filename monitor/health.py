"""Liveness, readiness and metrics over HTTP: a small WSGI app on `wsgiref`, bound to loopback.

* ``/livez`` — 200 while the main loop is alive (it calls `HealthState.heartbeat`); 503 once it has not for
  ``live_timeout_s``. A wedged process gets restarted by systemd/Kubernetes; a slow hub does not.
* ``/readyz`` — 503 before the first successful poll of every hub, 200 after, 503 again once a hub's last
  successful poll is older than 2 × its poll interval (and during shutdown). This is the "is it actually
  watching?" signal; Prometheus gets the same fact as ``hubsentry_last_successful_poll_timestamp_seconds``.
* ``/metrics`` — `prometheus_client.make_wsgi_app` on HubSentry's own registry (`monitor.metrics.Metrics`).

Everything here is read-only. Anything that changed state over HTTP would need a token; there is none.
The server binds 127.0.0.1 by default and refuses other addresses unless explicitly allowed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from monitor import __version__
from monitor.errors import ConfigError
from monitor.metrics import Metrics

__all__ = ["DEFAULT_LIVE_TIMEOUT_S", "READY_FACTOR", "HealthServer", "HealthState", "make_app"]

logger = logging.getLogger(__name__)

DEFAULT_LIVE_TIMEOUT_S = 300.0
"""The main loop must call `HealthState.heartbeat` at least this often (it wakes every few seconds)."""
READY_FACTOR = 2.0

StartResponse = Callable[..., Any]


class HealthState:
    """What the probes report, updated by the daemon.

    Args:
        hubs (`Mapping[str, float]`): poll interval in seconds of every configured hub.
        live_timeout_s (`float`): heartbeat age after which ``/livez`` fails.
        clock (`Callable[[], float]`): epoch seconds (tests inject one).
        metrics (`Metrics | None`): also record polls there, so readiness and
            ``hubsentry_last_successful_poll_timestamp_seconds`` can never disagree.
    """

    def __init__(
        self,
        *,
        hubs: Mapping[str, float],
        live_timeout_s: float = DEFAULT_LIVE_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        for name, interval in hubs.items():
            if not interval > 0:
                raise ConfigError(
                    f"hubs.{name}.poll_interval: must be positive for readiness, got {interval}"
                )
        self._intervals = dict(hubs)
        self._live_timeout_s = live_timeout_s
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        self._started_at = clock()
        self._heartbeat = self._started_at
        self._last_ok: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._stopping = False

    def heartbeat(self) -> None:
        """The main loop is alive (call from the loop itself, never from a helper thread)."""
        with self._lock:
            self._heartbeat = self._clock()

    def poll_finished(self, hub: str, *, ok: bool, error: str | None = None, at: float | None = None) -> None:
        """Record one listing pass of ``hub`` (and count it in the metrics, if given)."""
        moment = self._clock() if at is None else at
        with self._lock:
            if ok:
                self._last_ok[hub] = moment
                self._last_error.pop(hub, None)
            elif error:
                self._last_error[hub] = error[:300]
        if self._metrics is not None:
            self._metrics.record_poll(hub, ok=ok, at=moment)

    def stopping(self) -> None:
        """Shutdown began: report not ready so traffic and dashboards stop trusting this instance."""
        with self._lock:
            self._stopping = True

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, details) for ``/livez``."""
        with self._lock:
            age = self._clock() - self._heartbeat
            alive = age <= self._live_timeout_s
            return alive, {
                "status": "ok" if alive else "stalled",
                "heartbeat_age_s": round(age, 3),
                "live_timeout_s": self._live_timeout_s,
                "version": __version__,
            }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for ``/readyz``: every hub polled successfully within 2 × its interval."""
        with self._lock:
            now = self._clock()
            hubs: dict[str, Any] = {}
            ready = not self._stopping
            for name, interval in sorted(self._intervals.items()):
                last = self._last_ok.get(name)
                max_age = READY_FACTOR * interval
                hub_ok = last is not None and now - last <= max_age
                ready = ready and hub_ok
                hubs[name] = {
                    "ok": hub_ok,
                    "last_successful_poll": _iso(last) if last is not None else None,
                    "age_s": round(now - last, 3) if last is not None else None,
                    "max_age_s": max_age,
                    "last_error": self._last_error.get(name),
                }
            if self._stopping:
                status = "stopping"
            elif ready:
                status = "ready"
            elif not self._last_ok:
                status = "waiting for the first successful poll"
            else:
                status = "stale"
            return ready, {"status": status, "hubs": hubs}


def make_app(
    state: HealthState, metrics: Metrics
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application serving ``/livez``, ``/readyz`` and ``/metrics`` (GET and HEAD only)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _respond(
                start_response,
                "405 Method Not Allowed",
                {"error": "read-only"},
                method,
                extra=[("Allow", "GET, HEAD")],
            )
        if path == "/livez":
            alive, details = state.liveness()
            return _respond(start_response, "200 OK" if alive else "503 Service Unavailable", details, method)
        if path == "/readyz":
            ready, details = state.readiness()
            return _respond(start_response, "200 OK" if ready else "503 Service Unavailable", details, method)
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            return _respond(
                start_response, "200 OK", {"endpoints": ["/livez", "/readyz", "/metrics"]}, method
            )
        return _respond(start_response, "404 Not Found", {"error": "not found"}, method)

    return app


def _respond(
    start_response: StartResponse,
    status: str,
    body: dict[str, Any],
    method: str,
    *,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        *(extra or []),
    ]
    start_response(status, headers)
    return [] if method == "HEAD" else [data]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow ``/metrics`` scrape never delays a liveness probe."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64  # socketserver's default backlog of 5 can reset concurrent probes and scrapes


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Probes hit every few seconds: access lines go to DEBUG, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health %s - " + format, self.address_string(), *args)


class HealthServer:
    """Serves `make_app` on a background thread.

    Args:
        state (`HealthState`), metrics (`Metrics`): what to report.
        host (`str`), port (`int`): where to listen, normally ``config.server.host``/``.port`` (port 0 picks
            a free one; see `port`).
        allow_non_loopback (`bool`): permit a non-loopback address (e.g. a pod IP for kubelet probes). The
            endpoints are read-only, but they still reveal hub names and queue sizes; keep it off unless the
            network is trusted.

    Raises:
        `ConfigError`: the address is not loopback and not allowed, or it cannot be bound.
    """

    def __init__(
        self,
        state: HealthState,
        metrics: Metrics,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        allow_non_loopback: bool = False,
    ) -> None:
        if not _is_loopback(host) and not allow_non_loopback:
            raise ConfigError(
                f"server.listen: {host!r} is not a loopback address; HubSentry serves health and metrics on "
                "127.0.0.1 only (publish the port through your container runtime or a sidecar)"
            )
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        try:
            self._server = make_server(
                host, port, make_app(state, metrics), server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(f"server.listen: cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="hubsentry-health",
                daemon=True,
            )
            self._thread.start()
            logger.info("health and metrics on %s (/livez /readyz /metrics)", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
