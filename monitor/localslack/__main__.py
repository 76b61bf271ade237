"""``python -m monitor.localslack``: serve a local Slack on loopback and print every message it receives.

Example::

    python -m monitor.localslack --channel model-ip --port 8765
    # then in hubsentry.toml: [alerts.slack] base_url = "http://127.0.0.1:8765/api/"
    # and export SLACK_BOT_TOKEN=<the token printed at start>
"""

from __future__ import annotations

import signal
import threading

import click

from monitor.localslack.server import DEFAULT_TOKEN, LocalSlack
from monitor.localslack.workspace import Message


def _print_message(message: Message) -> None:
    click.echo(f"--- {message.channel} ts={message.ts} alert={message.alert_key or '-'}")
    click.echo(message.text)


@click.command()
@click.option(
    "--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0 picks a free one)."
)
@click.option("--channel", "channels", multiple=True, default=("model-ip",), show_default=True)
@click.option("--token", default=DEFAULT_TOKEN, show_default=True, help="Bot token the server accepts.")
@click.option("--rate-limit/--no-rate-limit", default=False, help="Emulate 1 message/s per channel.")
def main(port: int, channels: tuple[str, ...], token: str, rate_limit: bool) -> None:
    """Serve a local Slack Web API until Ctrl-C, printing each posted message.

    \b
    Example:
        python -m monitor.localslack --channel model-ip --port 8765
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalSlack(token=token, channels=channels, port=port, on_message=_print_message) as slack:
        if rate_limit:
            slack.rate_limit(1.0)
        click.echo(f"local Slack at {slack.base_url} (channels: {', '.join(channels)}; token: {token})")
        stop.wait()


if __name__ == "__main__":
    main()
