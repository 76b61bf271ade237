"""HubSentry's configuration: one TOML file, validated at start, with named defaults.

Where the file is found: ``--config PATH``, else ``$HUBSENTRY_CONFIG``, else ``./hubsentry.toml``.
Every section is a frozen dataclass (`monitor.config.model`); every default is a module-level
constant; unknown keys are errors; every message names the key path (`monitor.config.parse`).
Secrets are referenced, never inlined (``token_env`` / ``token_file``, resolved by `monitor.secrets`).
Apart from `monitor.secrets` (which reads the variables a config names), this package is the only
code that reads the process environment.

Durations: ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``, ``"2w"`` or a bare number of seconds.
Sizes: ``"64MiB"``, ``"1GB"``, ``"512KiB"``, ``"100B"`` or a bare number of bytes.

Example::

    from monitor.config import load_config
    config = load_config("hubsentry.toml")
    for hub in config.hubs:
        print(hub.name, hub.poll_interval_s)
"""

from monitor.config.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_NAME,
    PUBLIC_HF_ENDPOINT,
    VERDICT_ORDER,
    AlertsConfig,
    Config,
    ExecutorConfig,
    FingerprintConfig,
    HubConfig,
    LoggingConfig,
    LogSinkConfig,
    QueueConfig,
    RuntimeEnv,
    ServerConfig,
    SlackConfig,
    StoreConfig,
    runtime_env,
)
from monitor.config.parse import find_config_path, load_config, parse_config
from monitor.config.render import EXAMPLE_CONFIG, render_config
from monitor.config.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_NAME",
    "EXAMPLE_CONFIG",
    "PUBLIC_HF_ENDPOINT",
    "VERDICT_ORDER",
    "AlertsConfig",
    "Config",
    "ExecutorConfig",
    "FingerprintConfig",
    "HubConfig",
    "LogSinkConfig",
    "LoggingConfig",
    "QueueConfig",
    "RuntimeEnv",
    "ServerConfig",
    "SlackConfig",
    "StoreConfig",
    "find_config_path",
    "format_duration",
    "format_size",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "render_config",
    "runtime_env",
]
