"""Triage: ``hubsentry alerts list|ack|resolve|requeue-dead`` and ``hubsentry queue list|requeue``."""

from __future__ import annotations

from typing import cast

import click

from monitor.cli.base import App, cli, console, emit_json, fail, pass_app, table
from monitor.store import (
    ALERT_STATES,
    RESOLUTIONS,
    WORK_STATES,
    AlertNotFoundError,
    Resolution,
    Store,
    ack_alert,
    list_alerts,
    list_items,
    requeue,
    resolve_alert,
    resolve_key,
    utc_now,
)

__all__ = ["alerts", "queue"]


@cli.group()
def alerts() -> None:
    """Triage alerts: list, acknowledge, resolve; requeue undeliverable ones."""


@alerts.command("list")
@click.option("--state", type=click.Choice(ALERT_STATES), default=None, help="Only alerts in this state.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (schema hubsentry.alert/1).")
@pass_app
def alerts_list(app: App, state: str | None, limit: int, as_json: bool) -> None:
    """List alerts, newest first.

    \b
    Example:
        hubsentry alerts list --state new
    """
    from monitor.alerts.model import Alert
    from monitor.alerts.render import format_p, render_json

    with app.store() as store, store.read() as db:
        rows = list_alerts(db, state=state, limit=limit)
    parsed = [(row, Alert.from_row(row)) for row in rows]
    if as_json:
        emit_json(
            [
                {
                    **render_json(alert),
                    "triage": {
                        "state": row["state"],
                        "resolution": row["resolution"],
                        "reason": row["resolution_reason"],
                    },
                }
                for row, alert in parsed
            ]
        )
        return
    grid = table(
        "alerts", "key", "seq", "severity", "verdict", "protected", "suspect", "p", "state", "created"
    )
    for row, alert in parsed:
        grid.add_row(
            row["alert_key"][:12],
            str(row["seq"]),
            row["severity"],
            row["verdict"],
            row["protected"],
            f"{row['hub']}:{row['repo_id']}@{row['commit_sha'][:12]}",
            format_p(alert.finding.p_value, alert.finding.log10_p),
            row["state"],
            row["created_at"],
        )
    console().print(grid)


@alerts.command("ack")
@click.argument("key")
@pass_app
def alerts_ack(app: App, key: str) -> None:
    """Acknowledge an alert (someone is looking at it). KEY may be a unique prefix.

    \b
    Example:
        hubsentry alerts ack 3f9c2a71
    """
    with app.store() as store:
        full = _alert_key(store, key)
        changed = store.write(lambda db: ack_alert(db, full, now=utc_now()))
    click.echo(f"acknowledged {full}" if changed else f"{full} was already acknowledged or resolved")


@alerts.command("resolve")
@click.argument("key")
@click.option("--as", "resolution", type=click.Choice(RESOLUTIONS), required=True, help="The disposition.")
@click.option("--reason", required=True, help="Why (kept as the audit trail).")
@pass_app
def alerts_resolve(app: App, key: str, resolution: str, reason: str) -> None:
    """Resolve an alert as a true or false positive, with a reason. KEY may be a unique prefix.

    \b
    Example:
        hubsentry alerts resolve 3f9c2a71 --as true-positive --reason "re-upload, takedown filed"
    """
    with app.store() as store:
        full = _alert_key(store, key)
        store.write(
            lambda db: resolve_alert(
                db,
                full,
                resolution=cast(Resolution, resolution),  # click.Choice(RESOLUTIONS) checked it
                reason=reason,
                now=utc_now(),
            )
        )
    click.echo(f"resolved {full} as {resolution}")


@alerts.command("requeue-dead")
@click.option(
    "--sink", default=None, help='Only this sink (as in `hubsentry status`, e.g. "slack:#model-ip").'
)
@click.option("--key", default=None, help="Only this alert (a unique prefix of its key).")
@pass_app
def alerts_requeue_dead(app: App, sink: str | None, key: str | None) -> None:
    """Deliver dead letters again, once the cause is fixed (revoked token, unknown channel...).

    A dead letter is an alert a sink refused permanently; `hubsentry status` shows how many each sink has
    and the last reason. Requeued alerts go out in order with the alerts still waiting for that sink, on
    the daemon's next delivery run (or the next `hubsentry scan`).

    \b
    Examples:
        hubsentry alerts requeue-dead
        hubsentry alerts requeue-dead --sink "slack:#model-ip"
        hubsentry alerts requeue-dead --key 3f9c2a71
    """
    from monitor.alerts.delivery import requeue_dead

    with app.store() as store:
        full = _alert_key(store, key) if key is not None else None
        count = requeue_dead(store, sink=sink, alert_key=full)
    scope = ", ".join(
        part for part in (f"sink {sink}" if sink else "", f"alert {full}" if full else "") if part
    )
    click.echo(f"requeued {count} dead letter(s){f' ({scope})' if scope else ''}")
    if count == 0 and (sink or full):
        fail(f"no dead letters matched ({scope})")


def _alert_key(store: Store, key: str) -> str:
    try:
        with store.read() as db:
            return resolve_key(db, key)
    except AlertNotFoundError as exc:
        fail(str(exc))


@cli.group()
def queue() -> None:
    """Inspect and repair the work queue (dead letters)."""


@queue.command("list")
@click.option("--state", type=click.Choice(WORK_STATES), default=None, help="Only items in this state.")
@click.option("--hub", default=None, help="Only items of this hub.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def queue_list(app: App, state: str | None, hub: str | None, limit: int, as_json: bool) -> None:
    """List work items, newest first.

    \b
    Example:
        hubsentry queue list --state dead
    """
    with app.store() as store, store.read() as db:
        items = list_items(db, state=state, hub=hub, limit=limit)  # type: ignore[arg-type]
    if as_json:
        emit_json([item.to_dict() for item in items])
        return
    grid = table(
        "work items", "id", "hub", "repo", "commit", "state", "attempts", "next attempt", "last error"
    )
    for i in items:
        grid.add_row(
            str(i.id),
            i.hub,
            i.repo_id,
            i.commit_sha[:12],
            i.state,
            str(i.attempts),
            i.next_attempt_at.isoformat(timespec="seconds") if i.state in ("pending", "failed") else "",
            (i.last_error or "")[:200],
        )
    console().print(grid)


@queue.command("requeue")
@click.argument("ids", nargs=-1, type=int)
@click.option("--dead", is_flag=True, help="Requeue every dead item.")
@pass_app
def queue_requeue(app: App, ids: tuple[int, ...], dead: bool) -> None:
    """Make items due again with a fresh attempt count (after fixing what killed them).

    \b
    Examples:
        hubsentry queue requeue 42 43
        hubsentry queue requeue --dead
    """
    if not ids and not dead:
        raise click.UsageError("give item IDs or --dead")
    with app.store() as store:
        done = store.write(lambda db: requeue(db, ids=ids, state="dead" if dead else None, now=utc_now()))
    missing = sorted(set(ids) - set(done))
    click.echo(f"requeued {len(done)} item(s)")
    if missing:
        fail(f"not requeued (unknown, or running under a live lease): {', '.join(map(str, missing))}")
