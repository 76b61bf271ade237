"""The configuration's shape: one frozen dataclass per TOML section, and every default as a named constant.

Parsing lives in `monitor.config.parse`; this module only says what a valid configuration *is*, so
other modules can type against it without importing the parser.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from monitor.errors import ConfigError
from monitor.secrets import SecretRef

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_NAME",
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
    "default_rate_state_file",
    "runtime_env",
]

CONFIG_ENV = "HUBSENTRY_CONFIG"
DEFAULT_CONFIG_NAME = "hubsentry.toml"
PUBLIC_HF_ENDPOINT = "https://huggingface.co"
HF_ENDPOINT_ENV = "HF_ENDPOINT"

# [store]
DEFAULT_STORE_PATH = "hubsentry.db"
DEFAULT_BUSY_TIMEOUT_S = 30.0
# [[hubs]]
DEFAULT_HUB_NAME = "huggingface"
DEFAULT_HUB_KIND = "huggingface"
HUB_KINDS = ("huggingface",)
DEFAULT_POLL_INTERVAL_S = 300.0
DEFAULT_JITTER_S = 30.0
DEFAULT_HF_TOKEN_ENV = "HF_TOKEN"  # noqa: S105 - a variable name, not a secret
DEFAULT_OVERLAP_S = 900.0
DEFAULT_INITIAL_LOOKBACK_S = 3600.0
DEFAULT_MAX_REPOS_PER_CYCLE = 2000
DEFAULT_BUDGET_PER_REPO = 64 * 1024 * 1024
DEFAULT_API_REQUESTS_PER_WINDOW = 1000
DEFAULT_RESOLVER_REQUESTS_PER_WINDOW = 5000
DEFAULT_RATE_WINDOW_S = 300.0
DEFAULT_HUB_TIMEOUT_S = 30.0
# [alerts]
VERDICT_ORDER: tuple[str, ...] = ("independent", "inconclusive", "derived")
DEFAULT_MIN_VERDICT = "derived"
DEFAULT_SLACK_CHANNEL = "#model-ip"
DEFAULT_SLACK_TOKEN_ENV = "SLACK_BOT_TOKEN"  # noqa: S105 - a variable name, not a secret
DEFAULT_SLACK_BASE_URL = "https://slack.com/api/"
DEFAULT_SLACK_TIMEOUT_S = 10.0
# [fingerprint]
DEFAULT_FP_SECRET_ENV = "HUBSENTRY_SECRET"  # noqa: S105 - a variable name, not a secret
DEFAULT_FAMILY_ALPHA_PER_DAY = 0.01
DEFAULT_MAX_COMPARISONS_PER_DAY = 10_000_000
DEFAULT_LAYERS = 4
DEFAULT_ROWS_PER_LAYER = 64
DEFAULT_TOKENS = 256
DEFAULT_MAX_CANDIDATES = 16
DEFAULT_ATTENTION_HEADS = 1
# [executor]
EXECUTOR_KINDS = ("threads", "dask")
DEFAULT_EXECUTOR_KIND = "threads"
DEFAULT_WORKERS = 4
# [server]
DEFAULT_LISTEN = "127.0.0.1:9464"
# [queue]
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_BASE_S = 30.0
DEFAULT_BACKOFF_MAX_S = 6 * 3600.0
DEFAULT_LEASE_S = 300.0
DEFAULT_ITEM_TIMEOUT_S = 1800.0
# [logging]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "text"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: the SQLite file and where registry reference arrays live.

    Attributes:
        path (`Path`): SQLite database file (local disk only: WAL does not work on network filesystems).
        refs_dir (`Path`): folder for registry reference arrays (default ``<path>.refs``).
        busy_timeout_s (`float`): how long a connection waits for a lock before failing.
    """

    path: Path
    refs_dir: Path
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class HubConfig:
    """One ``[[hubs]]`` entry: what to poll, how often, and how much it may cost.

    Attributes:
        name (`str`): stable identifier stored in cursors, work items and alerts; never rename it.
        kind (`str`): protocol spoken (``huggingface``; a local hub speaks it too).
        endpoint (`str`): base URL.
        poll_interval_s (`float`), jitter_s (`float`): polling period and random delay added to it.
        token (`SecretRef | None`): hub token reference (optional: anonymous access has lower limits).
        overlap_s (`float`): how far below the cursor each walk re-checks (late-indexed repos).
        initial_lookback_s (`float`): how far back the very first walk goes (no cursor yet).
        max_repos_per_cycle (`int`): new repos enqueued per pass and cycle at most.
        budget_per_repo (`int`): hard cap on bytes read per repo commit.
        api_requests_per_window (`int`), resolver_requests_per_window (`int`): our own request ceilings.
        rate_window_s (`float`): length of the hub's rate-limit window (HF: 5 minutes).
        timeout_s (`float`): per-request timeout.
        allowed_storage_hosts (`tuple[str, ...] | None`): hosts the hub's storage redirects may lead to
            (``".hf.co"`` matches subdomains); the operator vouches for them, private addresses included.
            None: any host whose addresses are all public (`monitor.validate.RedirectPolicy`).
        rate_state_file (`Path | None`): where the request budget's recent history is shared between
            processes and restarts (`monitor.hubs.ratestate`); default next to the database. None: each
            process keeps its own (the ceiling then holds per process only).
    """

    name: str = DEFAULT_HUB_NAME
    kind: str = DEFAULT_HUB_KIND
    endpoint: str = PUBLIC_HF_ENDPOINT
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    jitter_s: float = DEFAULT_JITTER_S
    token: SecretRef | None = None
    overlap_s: float = DEFAULT_OVERLAP_S
    initial_lookback_s: float = DEFAULT_INITIAL_LOOKBACK_S
    max_repos_per_cycle: int = DEFAULT_MAX_REPOS_PER_CYCLE
    budget_per_repo: int = DEFAULT_BUDGET_PER_REPO
    api_requests_per_window: int = DEFAULT_API_REQUESTS_PER_WINDOW
    resolver_requests_per_window: int = DEFAULT_RESOLVER_REQUESTS_PER_WINDOW
    rate_window_s: float = DEFAULT_RATE_WINDOW_S
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S
    allowed_storage_hosts: tuple[str, ...] | None = None
    rate_state_file: Path | None = None


def default_rate_state_file(store_path: Path, hub_name: str) -> Path:
    """``<database>.ratelimit-<hub>.json``: the shared request history of one hub, next to the database."""
    return store_path.with_name(f"{store_path.name}.ratelimit-{hub_name}.json")


@dataclass(frozen=True, slots=True)
class SlackConfig:
    """``[alerts.slack]``: the Slack channel alerts go to.

    Attributes:
        channel (`str`): channel name or id.
        token (`SecretRef`): bot token reference (required when Slack is configured).
        base_url (`str`): Web API base URL (tests and air-gapped demos point it at a local server).
        timeout_s (`float`): per-request timeout.
    """

    channel: str
    token: SecretRef
    base_url: str = DEFAULT_SLACK_BASE_URL
    timeout_s: float = DEFAULT_SLACK_TIMEOUT_S

    @property
    def sink(self) -> str:
        """Outbox sink name of this channel."""
        return f"slack:{self.channel}"


@dataclass(frozen=True, slots=True)
class LogSinkConfig:
    """``[alerts.log]``: also write every alert as a structured log line."""

    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """``[alerts]``: which findings alert and where alerts go.

    Attributes:
        min_verdict (`str`): lowest verdict that alerts: ``derived`` or ``inconclusive``.
        slack (`SlackConfig | None`): Slack delivery, if the section is present.
        log (`LogSinkConfig`): log delivery.
    """

    min_verdict: Literal["derived", "inconclusive"] = "derived"
    slack: SlackConfig | None = None
    log: LogSinkConfig = field(default_factory=LogSinkConfig)

    @property
    def sinks(self) -> tuple[str, ...]:
        """Outbox sink names, one outbox row per alert and sink (e.g. ``("slack:#model-ip", "log")``)."""
        names: list[str] = []
        if self.slack is not None:
            names.append(self.slack.sink)
        if self.log.enabled:
            names.append("log")
        return tuple(names)


@dataclass(frozen=True, slots=True)
class FingerprintConfig:
    """``[fingerprint]``: sampling sizes and the error budget of the statistical tests.

    Attributes:
        secret (`SecretRef`): secret sampling seed (uploaders must not know which rows are read).
        family_alpha_per_day (`float`): family-wise false-positive budget per day.
        max_comparisons_per_day (`int`): Bonferroni divisor.
        layers (`int`), rows_per_layer (`int`), tokens (`int`): how much of each suspect is sampled.
        max_candidates (`int`): protected models tested per upload after screening.
        attention_heads (`int`): query heads read by the attention tier for flagged candidates (0 turns
            the tier off: verdicts stay, attention-only obfuscations go unnamed).
    """

    secret: SecretRef
    family_alpha_per_day: float = DEFAULT_FAMILY_ALPHA_PER_DAY
    max_comparisons_per_day: int = DEFAULT_MAX_COMPARISONS_PER_DAY
    layers: int = DEFAULT_LAYERS
    rows_per_layer: int = DEFAULT_ROWS_PER_LAYER
    tokens: int = DEFAULT_TOKENS
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    attention_heads: int = DEFAULT_ATTENTION_HEADS

    @property
    def per_comparison_alpha(self) -> float:
        """Significance level of one comparison (Bonferroni): ``family_alpha / max_comparisons``."""
        return self.family_alpha_per_day / self.max_comparisons_per_day


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """``[executor]``: where scans run (threads in-process, or a Dask cluster).

    Attributes:
        kind (`str`): ``threads`` or ``dask``.
        workers (`int`): thread count (threads) or threads of the in-process Dask cluster.
        dask_scheduler (`str`): ``tcp://host:8786``; empty = in-process ``LocalCluster``.
    """

    kind: Literal["threads", "dask"] = "threads"
    workers: int = DEFAULT_WORKERS
    dask_scheduler: str = ""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the health and metrics endpoint (``/livez``, ``/readyz``, ``/metrics``).

    Attributes:
        listen (`str`): ``host:port`` as written; empty disables the server.
        host (`str`), port (`int`): parsed from ``listen``.
        allow_non_loopback (`bool`): permit a non-loopback ``listen`` (inside a container or pod,
            where probes and Prometheus reach the container's own address). Off by default.
    """

    listen: str = DEFAULT_LISTEN
    host: str = "127.0.0.1"
    port: int = 9464
    allow_non_loopback: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``[queue]``: retries and leases of the durable work queue.

    Attributes:
        max_attempts (`int`): attempts before an item becomes ``dead`` (operator-visible).
        backoff_base_s (`float`), backoff_max_s (`float`): exponential backoff between attempts.
        lease_s (`float`): how long a claimed item stays ours without renewal (crash recovery time).
        item_timeout_s (`float`): a scan running longer is abandoned and retried later.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    lease_s: float = DEFAULT_LEASE_S
    item_timeout_s: float = DEFAULT_ITEM_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``[logging]``: level and format (``json`` for log shippers)."""

    level: str = DEFAULT_LOG_LEVEL
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration.

    Attributes:
        source (`Path | None`): file it was read from (``None``: built-in defaults).
    """

    store: StoreConfig
    hubs: tuple[HubConfig, ...]
    alerts: AlertsConfig
    fingerprint: FingerprintConfig
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None

    def hub(self, name: str) -> HubConfig:
        """The hub called ``name``; `ConfigError` if there is none."""
        for hub in self.hubs:
            if hub.name == name:
                return hub
        raise ConfigError(f"no hub named {name!r} (configured: {', '.join(h.name for h in self.hubs)})")


@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    """Process-environment facts the daemon needs (read here so no other module reads the environment).

    Attributes:
        notify_socket (`str | None`): systemd ``NOTIFY_SOCKET`` (``Type=notify``).
        watchdog_usec (`int | None`): systemd ``WATCHDOG_USEC``.
    """

    notify_socket: str | None
    watchdog_usec: int | None


def runtime_env(environ: Mapping[str, str] | None = None) -> RuntimeEnv:
    """Read the systemd notification settings from the environment."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    return RuntimeEnv(
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(raw) if raw.isdigit() and int(raw) > 0 else None,
    )
