"""``hubsentry protect add|list|remove``: the registry of protected models."""

from __future__ import annotations

from dataclasses import asdict

import click

from monitor.cli.base import App, cli, console, emit_json, fail, lead_function, pass_app, table
from monitor.store import list_protected

__all__ = ["protect"]


@cli.group()
def protect() -> None:
    """Manage the registry of protected models (what HubSentry looks for)."""


@protect.command("add")
@click.argument("source")
@click.option("--name", required=True, help="Registry name, shown in alerts (e.g. acme/guard-7b).")
@click.option("--owner", default=None, help="Owning team, for routing and mentions.")
@pass_app
def protect_add(app: App, source: str, name: str, owner: str | None) -> None:
    """Register a protected model from a local folder or file, or a hub repo ORG/NAME[@REV].

    \b
    Example:
        hubsentry protect add ./models/guard-7b --name acme/guard-7b --owner ip-team
    """
    add = lead_function("monitor.registry", "add", "protect add")
    with app.store() as store:
        result = add(store, source, name=name, owner=owner, config=app.config())
    click.echo(f"protected {getattr(result, 'name', name)}")


@protect.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def protect_list(app: App, as_json: bool) -> None:
    """List protected models.

    \b
    Example:
        hubsentry protect list --json
    """
    with app.store() as store, store.read() as db:
        models = list_protected(db)
    if as_json:
        emit_json([{**asdict(m), "files": [asdict(f) for f in m.files]} for m in models])
        return
    grid = table("protected models", "name", "owner", "source", "algo", "files", "registered")
    for m in models:
        grid.add_row(m.name, m.owner or "", m.source, m.algo, str(len(m.files)), m.created_at.isoformat())
    console().print(grid)


@protect.command("remove")
@click.argument("name")
@pass_app
def protect_remove(app: App, name: str) -> None:
    """Stop protecting a model (its scan history and alerts are kept).

    \b
    Example:
        hubsentry protect remove acme/guard-7b
    """
    remove = lead_function("monitor.registry", "remove", "protect remove")
    with app.store() as store:
        removed = remove(store, name, config=app.config())
    if not removed:
        fail(f"no protected model named {name!r} (see: hubsentry protect list)")
    click.echo(f"removed {name}")
