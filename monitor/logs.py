"""Logging setup: one handler on the root logger, text or JSON lines, and secret redaction.

Every record passes `RedactingFilter` before it is written: any value registered through
`monitor.secrets` (hub token, Slack token, sampling secret) is replaced by ``********`` in the message,
its arguments, the formatted traceback and the stack info. The filter sits on the *handler*, so it also
covers records from third-party loggers (httpx, huggingface_hub, slack_sdk, apscheduler) that propagate
to the root logger.

Records may carry structured context through ``extra=`` (``hub``, ``repo_id``, ``commit``, ``item_id``,
``sink``, ``alert_key``); the JSON format emits them as fields so log shippers can index them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from monitor.secrets import redact

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "RedactingFilter", "TextFormatter", "setup_logging"]

CONTEXT_FIELDS = ("hub", "sort", "repo_id", "commit", "item_id", "attempt", "sink", "alert_key", "job")
"""Structured fields recognised in ``extra=``."""

_HANDLER_NAME = "hubsentry"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "apscheduler.executors.default")


class RedactingFilter(logging.Filter):
    """Masks registered secret values in every record; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = redact(value)
        return True


class TextFormatter(logging.Formatter):
    """``2026-11-27T12:00:00.123Z INFO    monitor.worker: message  [hub=… repo_id=…]``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """UTC ISO-8601 with milliseconds (``2026-11-27T12:00:00.123Z``), whatever the host's zone."""
        return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in CONTEXT_FIELDS
            if record.__dict__.get(name) is not None
        )
        if context:
            first, nl, rest = text.partition("\n")
            text = f"{first}  [{context}]{nl}{rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO-8601), ``level``, ``logger``, ``msg``, context, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                payload[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(payload, default=str, ensure_ascii=False)


def setup_logging(
    *, level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Install HubSentry's handler on the root logger (replacing one installed earlier).

    Args:
        level (`str`): ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        fmt (`str`): ``text`` for people, ``json`` for log shippers.
        stream (`IO[str] | None`): where to write (default: stderr, which journald and Docker collect).

    Returns:
        The installed handler (tests attach it to a buffer).
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
