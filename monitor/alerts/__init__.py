"""Alert delivery: render alerts, send them to sinks (Slack, log, webhook) through the crash-safe outbox.

Typical daemon wiring::

    from monitor.alerts import build_sinks, deliver_due
    sinks = build_sinks(config.alerts)                 # {"slack:#model-ip": SlackSink, "log": LogSink}
    deliver_due(store, sinks, stop_event, metrics=metrics)   # run every few seconds on its own job

Modules: `model` (the `Alert` parsed from a stored row), `render` (Block Kit, text, JSON), `sinks` (the `Sink`
protocol, log and webhook sinks, failure classes), `slack` (the Slack sink), `outbox` (SQL over the outbox
table) and `delivery` (the consumer, status and ``notify test``).
"""

from monitor.alerts.delivery import (
    DEFAULT_POLICY,
    DeliveryReport,
    RetryPolicy,
    deliver_due,
    notify_test,
    requeue_dead,
    retry_delay,
)
from monitor.alerts.model import Alert, AlertDataError
from monitor.alerts.outbox import SinkStatus, delivery_status
from monitor.alerts.render import render_json, render_minimal, render_slack, render_text, summary_line
from monitor.alerts.sinks import (
    DeliveryUncertainError,
    LogSink,
    RecoverableSink,
    Sink,
    WebhookSink,
    build_sinks,
)
from monitor.alerts.slack import SlackSink, classify_slack_error

__all__ = [
    "DEFAULT_POLICY",
    "Alert",
    "AlertDataError",
    "DeliveryReport",
    "DeliveryUncertainError",
    "LogSink",
    "RecoverableSink",
    "RetryPolicy",
    "Sink",
    "SinkStatus",
    "SlackSink",
    "WebhookSink",
    "build_sinks",
    "classify_slack_error",
    "deliver_due",
    "delivery_status",
    "notify_test",
    "render_json",
    "render_minimal",
    "render_slack",
    "render_text",
    "requeue_dead",
    "retry_delay",
    "summary_line",
]
