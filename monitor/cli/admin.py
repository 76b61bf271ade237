"""Operations: ``hubsentry config check|init``, ``db migrate``, ``notify test`` and ``status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from monitor.cli.base import EXIT_PROBLEM, App, cli, console, emit_json, fail, lead_function, pass_app, table
from monitor.config import EXAMPLE_CONFIG, Config, find_config_path, render_config
from monitor.errors import NotifyError
from monitor.secrets import secret_status
from monitor.store import Store, collect_status, connect, migration_status
from monitor.store.migrations import apply_migrations

__all__ = ["config_group", "db", "notify", "status"]


@cli.group("config")
def config_group() -> None:
    """Create and validate the configuration file."""


@config_group.command("check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config and print it with every default spelled out and secrets masked.

    Exits 1 when a required secret is missing or unreadable.

    \b
    Example:
        hubsentry --config /etc/hubsentry/config.toml config check
    """
    config = app.config()
    click.echo(render_config(config), nl=False)
    refs = [config.fingerprint.secret, *(h.token for h in config.hubs)]
    if config.alerts.slack is not None:
        refs.append(config.alerts.slack.token)
    problems = []
    for ref in refs:
        if ref is None:
            continue
        status = secret_status(ref)
        usable = status.startswith("set")
        # an optional token may be absent (anonymous access), but a file that is named must be readable
        if not usable and (ref.required or ref.file is not None):
            problems.append(f"{ref.key}: {ref.describe()} is {status}")
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise SystemExit(EXIT_PROBLEM)
    click.echo("# config OK", err=True)


@config_group.command("init")
@click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write it (default: --config, $HUBSENTRY_CONFIG, or ./hubsentry.toml).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_app
def config_init(app: App, path: Path | None, force: bool) -> None:
    """Write the example configuration, to edit and then check with `hubsentry config check`.

    \b
    Example:
        hubsentry config init --path /etc/hubsentry/config.toml
    """
    target = path or find_config_path(app.config_path)
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    click.echo(f"wrote {target}; edit it, then run: hubsentry --config {target} config check")


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("migrate")
@click.option(
    "--list", "only_list", is_flag=True, help="Show applied and pending migrations; change nothing."
)
@pass_app
def db_migrate(app: App, only_list: bool) -> None:
    """Apply pending schema migrations (the daemon also does this at start).

    Back up first (see docs/operations.md: VACUUM INTO).

    \b
    Example:
        hubsentry db migrate --list
    """
    config = app.config()
    database = connect(config.store.path, busy_timeout_s=config.store.busy_timeout_s)
    try:
        if only_list:
            for status in migration_status(database):
                click.echo(f"{status.name}  {status.applied_at or 'pending'}")
            return
        applied = apply_migrations(database, path=config.store.path)
    finally:
        database.close()
    click.echo(f"applied: {', '.join(applied)}" if applied else "nothing to apply: the schema is current")


@cli.group()
def notify() -> None:
    """Check alert delivery."""


@notify.command("test")
@click.option("--sink", default=None, help="Only this sink (e.g. 'slack:#model-ip' or 'log').")
@pass_app
def notify_test_command(app: App, sink: str | None) -> None:
    """Send one clearly-labelled test alert through each configured sink (not through the outbox).

    \b
    Example:
        hubsentry notify test --sink 'slack:#model-ip'
    """
    from monitor.scheduler import alert_sinks

    send = lead_function("monitor.alerts.delivery", "notify_test", "notify test")
    sinks = alert_sinks(app.config())
    if sink is not None:
        if sink not in sinks:
            fail(f"no sink named {sink!r}; configured: {', '.join(sinks) or 'none'}")
        sinks = {sink: sinks[sink]}
    if not sinks:
        fail("no alert sink is configured ([alerts.slack] or [alerts.log])")
    failed = 0
    for name, target in sinks.items():
        try:
            result = send(target)
        except NotifyError as exc:
            failed += 1
            click.echo(f"{name}: FAILED: {exc}", err=True)
        else:
            click.echo(f"{name}: ok {json.dumps(result.get('receipt', {}), default=str)}")
    if failed:
        raise SystemExit(EXIT_PROBLEM)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show cursors, the queue by state, dead letters, alerts and the outbox backlog with its last error.

    Read-only: safe while the daemon runs.

    \b
    Example:
        hubsentry status --json
    """
    config = app.config()
    with app.store() as store:
        with store.read() as db:
            summary = collect_status(db)
        summary["outbox"] = _outbox(store, config)
    if as_json:
        emit_json(summary)
        return
    out = console()
    grid = table("hub cursors", "hub", "sort", "high water", "resume band", "last ok", "last error")
    for c in summary["cursors"]:
        band = f"({c['resume_after']}, {c['resume_top']}]" if c["resume_after"] else ""
        grid.add_row(
            c["hub"], c["sort"], c["high_water"] or "", band, c["last_ok_at"] or "", c["last_error"] or ""
        )
    out.print(grid)
    fp = config.fingerprint
    used = summary["comparisons_24h"]
    warn = (
        " [bold red](over budget: the daily error guarantee no longer holds)[/]"
        if used > fp.max_comparisons_per_day
        else ""
    )
    out.print(
        f"comparisons in the last 24 h: {used:,} of {fp.max_comparisons_per_day:,} budgeted "
        f"(per-comparison α = {fp.per_comparison_alpha:.1e}, family α/day = {fp.family_alpha_per_day}){warn}"
    )
    counts = summary["queue"]["counts"]
    out.print(
        "queue: "
        + ", ".join(f"{state} {n}" for state, n in counts.items())
        + (f"; next due {summary['queue']['next_due_at']}" if summary["queue"]["next_due_at"] else "")
    )
    if summary["dead"]:
        grid = table(
            "dead letters (hubsentry queue requeue ID)", "id", "repo", "commit", "attempts", "last error"
        )
        for d in summary["dead"]:
            grid.add_row(
                str(d["id"]),
                f"{d['hub']}:{d['repo_id']}",
                d["commit_sha"][:12],
                str(d["attempts"]),
                (d["last_error"] or "")[:200],
            )
        out.print(grid)
    out.print("alerts: " + ", ".join(f"{state} {n}" for state, n in summary["alerts"].items()))
    grid = table("outbox", "sink", "pending", "dead", "delivered", "last delivery", "last error")
    for s in summary["outbox"]:
        grid.add_row(
            s["sink"],
            str(s["pending"]),
            str(s["dead"]),
            str(s["delivered"]),
            s["last_delivered_at"] or "",
            s["last_error"] or s["last_dead_error"] or "",
        )
    out.print(grid)


def _outbox(store: Store, config: Config) -> list[dict[str, Any]]:
    try:
        from monitor.alerts.outbox import delivery_status
    except ImportError:
        return []
    return [s.as_json() for s in delivery_status(store, configured=config.alerts.sinks)]
