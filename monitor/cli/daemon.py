"""Commands that scan: ``run`` (the daemon), ``scan`` (one cycle), ``demo`` and ``compare``."""

from __future__ import annotations

import json
import threading
from typing import Any

import click

from monitor.cli.base import (
    EXIT_OK,
    EXIT_PROBLEM,
    App,
    cli,
    console,
    emit_json,
    json_default,
    lead_function,
    pass_app,
    table,
)
from monitor.config import Config, runtime_env
from monitor.scheduler import DEFAULT_PROCESSOR
from monitor.secrets import resolve_secret

__all__ = ["compare", "demo", "run", "scan"]


def _preflight(config: Config) -> None:
    """Fail before starting when the sampling secret is missing (every scan needs it)."""
    resolve_secret(config.fingerprint.secret)


@cli.command()
@click.option(
    "--processor", default=DEFAULT_PROCESSOR, hidden=True, help="MODULE:FACTORY building the scan processor."
)
@pass_app
def run(app: App, processor: str) -> None:
    """Run the daemon: poll every hub, scan new uploads, deliver alerts, until SIGTERM or Ctrl-C.

    Health and metrics are served on [server] listen (/livez /readyz /metrics). Under systemd
    (Type=notify) it reports READY, WATCHDOG and STOPPING. Exits 0 after a clean stop.

    \b
    Example:
        hubsentry --config /etc/hubsentry/config.toml run
    """
    from monitor.scheduler import (
        alert_sinks,
        build_services,
        load_processor_factory,
        run_daemon,
        start_monitoring,
        start_server,
        stop_on_signals,
    )

    config = app.config()
    _preflight(config)
    factory = load_processor_factory(processor)
    stop = threading.Event()
    with stop_on_signals(stop):
        sinks = alert_sinks(config)
        metrics, health = start_monitoring(config)
        services = build_services(
            config, processor_factory=factory, stop=stop, sinks=sinks, metrics=metrics, health=health
        )
        try:
            server = start_server(config, services)
        except BaseException:
            services.close()
            raise
        code = run_daemon(services, runtime=runtime_env(), server=server)
    raise SystemExit(code)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the cycle report as JSON.")
@click.option(
    "--processor", default=DEFAULT_PROCESSOR, hidden=True, help="MODULE:FACTORY building the scan processor."
)
@pass_app
def scan(app: App, as_json: bool, processor: str) -> None:
    """Run one cycle in the foreground: list every hub, scan every due item, deliver alerts.

    Exits 0 when every listing pass and every item succeeded, 1 otherwise (failed items are retried
    by the next cycle; see `hubsentry queue list`).

    \b
    Example:
        hubsentry scan --json
    """
    from monitor.scheduler import (
        alert_sinks,
        build_services,
        load_processor_factory,
        run_cycle,
        stop_on_signals,
    )

    config = app.config()
    _preflight(config)
    factory = load_processor_factory(processor)
    stop = threading.Event()
    with stop_on_signals(stop):
        services = build_services(config, processor_factory=factory, stop=stop, sinks=alert_sinks(config))
        try:
            report = run_cycle(services)
        finally:
            services.close()
    if as_json:
        emit_json(report.to_dict())
    else:
        grid = table("listing passes", "hub", "sort", "seen", "new", "known", "complete", "error")
        for p in report.passes:
            grid.add_row(
                p.hub,
                p.sort,
                str(p.seen),
                str(p.enqueued),
                str(p.known),
                "yes" if p.complete else "no",
                p.error or "; ".join(p.item_errors),
            )
        console().print(grid)
        d = report.drain
        click.echo(
            f"items: {d.claimed} claimed, {d.done} done ({d.noted} with a note), {d.retried} to retry, "
            f"{d.dead} dead, {len(d.new_alerts)} new alert(s)"
        )
    if not report.ok:
        raise SystemExit(EXIT_PROBLEM)


@cli.command()
def demo() -> None:
    """Run the offline demo: a local hub and a local Slack, a protected model, derived uploads, alerts.

    Needs no network and no config; everything runs on 127.0.0.1 in a temporary folder.

    \b
    Example:
        hubsentry demo
    """
    run_demo = lead_function("monitor.demo", "run_demo", "demo")
    code = run_demo()
    raise SystemExit(code if isinstance(code, int) else EXIT_OK)


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@pass_app
def compare(app: App, a: str, b: str, as_json: bool) -> None:
    """Compare two models (local paths or hub repos ORG/NAME[@REV]) and print the verdict and evidence.

    \b
    Example:
        hubsentry compare ./guard-7b someorg/guard-7b-ft --json
    """
    compare_models = lead_function("monitor.registry", "compare", "compare")
    result = compare_models(a, b, config=app.config(optional=True))
    _print_result(result, as_json=as_json)


def _print_result(result: Any, *, as_json: bool) -> None:
    data = result.to_dict() if hasattr(result, "to_dict") else json_default(result)
    if as_json:
        emit_json(data)
    elif hasattr(result, "to_text"):
        click.echo(result.to_text())
    elif isinstance(data, dict):
        grid = table("", "field", "value")
        for key, value in data.items():
            grid.add_row(str(key), value if isinstance(value, str) else json.dumps(value, default=str))
        console().print(grid)
    else:
        click.echo(str(data))
