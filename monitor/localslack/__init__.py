"""A local Slack Web API server that speaks the real protocol to the real `slack_sdk.WebClient`.

Used by the alert tests, the soak test and the offline demo (``hubsentry demo`` shows the messages it
received). Run one by hand with ``python -m monitor.localslack --channel model-ip`` and point
``alerts.slack.base_url`` at the printed URL.
"""

from monitor.localslack.blocks import BlockError, validate_blocks
from monitor.localslack.server import DEFAULT_TOKEN, LocalSlack
from monitor.localslack.workspace import ALL_SCOPES, Channel, Message, RequestRecord

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_TOKEN",
    "BlockError",
    "Channel",
    "LocalSlack",
    "Message",
    "RequestRecord",
    "validate_blocks",
]
