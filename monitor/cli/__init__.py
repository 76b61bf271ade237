"""The ``hubsentry`` command line: a thin layer over the config, store, scheduler, registry and alerts.

One module per command group (`monitor.cli.daemon`: run, scan, demo, compare; `protect`; `triage`:
alerts, queue; `admin`: config, db, notify, status); `monitor.cli.base` holds the root group, the
shared options and the exit codes. ``hub`` is `monitor.localhub.cli`, loaded on first use.

Every command's docstring is its ``--help`` text, with a runnable example. Humans get rich tables;
``--json`` gives machines a stable document on stdout. Logs go to stderr.

\b
Exit codes:
    0  success
    1  the command ran and found a problem (scan errors, failed check, unknown alert or item,
       failed notification)
    2  usage or configuration error (bad option, invalid or missing config, missing secret)
    3  database error (cannot open, disk full, written by a newer version)
"""

from monitor.cli import admin, daemon, protect, triage
from monitor.cli.base import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM, EXIT_STORE, cli

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_OK", "EXIT_PROBLEM", "EXIT_STORE", "cli", "main"]

_REGISTERED = (admin, daemon, protect, triage)  # importing them registers their commands on `cli`

COMMANDS = (
    "run",
    "scan",
    "demo",
    "compare",
    "protect add",
    "protect list",
    "protect remove",
    "alerts list",
    "alerts ack",
    "alerts resolve",
    "alerts requeue-dead",
    "queue list",
    "queue requeue",
    "hub serve",
    "config check",
    "config init",
    "db migrate",
    "notify test",
    "status",
)
"""Every command as typed after ``hubsentry`` (the README documents each; a test checks both ways)."""


def main() -> None:
    """Entry point of the ``hubsentry`` console script."""
    cli(prog_name="hubsentry")
