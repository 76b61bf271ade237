"""The root ``hubsentry`` group and what every command shares: options, config, store, output, exit codes.

\b
Exit codes:
    0  success
    1  the command ran and found a problem (scan errors, failed check, unknown alert or item,
       failed notification)
    2  usage or configuration error (bad option, invalid or missing config, missing secret)
    3  database error (cannot open, disk full, written by a newer version)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from monitor import __version__
from monitor.config import Config, find_config_path, load_config, parse_config
from monitor.errors import ConfigError, HubSentryError, StoreError
from monitor.logs import setup_logging
from monitor.store import Store

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "App",
    "CommandError",
    "HubSentryGroup",
    "cli",
    "console",
    "emit_json",
    "fail",
    "json_default",
    "lead_function",
    "pass_app",
    "table",
]

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG, EXIT_STORE = 0, 1, 2, 3
PIPED_WIDTH = 240
LAZY_GROUPS = {"hub": "monitor.localhub.cli:hub"}


class CommandError(click.ClickException):
    """A failure with its exit code; click prints ``Error: <message>`` to stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


class HubSentryGroup(click.Group):
    """Maps our exceptions to exit codes and loads the ``hub`` group on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_GROUPS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_GROUPS and cmd_name not in self.commands:
            module, _, attr = LAZY_GROUPS[cmd_name].partition(":")
            try:
                command = getattr(__import__(module, fromlist=[attr]), attr)
            except (ImportError, AttributeError) as exc:
                raise CommandError(f"{cmd_name}: not available in this build ({exc})", EXIT_CONFIG) from exc
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from exc
        except StoreError as exc:
            raise CommandError(str(exc), EXIT_STORE) from exc
        except (HubSentryError, ValueError) as exc:
            raise CommandError(str(exc), EXIT_PROBLEM) from exc


class App:
    """Per-invocation state: global options, the config (loaded once), output helpers."""

    def __init__(self, config_path: Path | None, log_level: str | None, log_format: str | None) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format
        self._config: Config | None = None
        setup_logging(level=log_level or "INFO", fmt=log_format or "text")

    def config(self, *, optional: bool = False) -> Config:
        """The validated config; with ``optional``, built-in defaults when no file exists."""
        if self._config is None:
            path = find_config_path(self.config_path)
            if optional and not path.exists():
                self._config = parse_config({})
            else:
                self._config = load_config(path)
            logging_config = self._config.logging
            setup_logging(
                level=self.log_level or logging_config.level, fmt=self.log_format or logging_config.format
            )
        return self._config

    @contextmanager
    def store(self) -> Iterator[Store]:
        config = self.config()
        with Store(config.store.path, busy_timeout_s=config.store.busy_timeout_s) as store:
            yield store


pass_app = click.make_pass_decorator(App)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=json_default, ensure_ascii=False))


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def console() -> Console:
    """Rich console on stdout; when piped (no terminal) tables are printed wide instead of folded."""
    out = Console(soft_wrap=True, highlight=False)
    if not out.is_terminal:
        out = Console(soft_wrap=True, highlight=False, width=PIPED_WIDTH)
    return out


def table(title: str, *columns: str) -> Table:
    grid = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid


def lead_function(module: str, name: str, command: str) -> Callable[..., Any]:
    """A function another part of HubSentry provides, imported when the command runs."""
    try:
        return getattr(__import__(module, fromlist=[name]), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise CommandError(
            f"`hubsentry {command}` needs {module}.{name}, not available in this build: {exc}"
        ) from exc


def fail(message: str, code: int = EXIT_PROBLEM) -> NoReturn:
    raise CommandError(message, code)


@click.group(cls=HubSentryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $HUBSENTRY_CONFIG, else ./hubsentry.toml).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Override [logging] level.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default=None, help="Override [logging] format."
)
@click.version_option(__version__, prog_name="hubsentry")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None, log_format: str | None) -> None:
    """HubSentry: watch model hubs for copies and derivatives of protected model weights.

    \b
    Start here:
        hubsentry config init            # write ./hubsentry.toml
        hubsentry config check           # validate it, secrets masked
        hubsentry protect add ./my-model --name acme/guard-7b --owner ip-team
        hubsentry scan                   # one cycle in the foreground
        hubsentry run                    # the daemon
    """
    ctx.obj = App(config_path, log_level.upper() if log_level else None, log_format)
