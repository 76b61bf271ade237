"""Reading the TOML file: find it, validate every key, and build the `Config`.

Unknown keys are errors (a typo must not silently fall back to a default for months) and every
message names the key path, e.g. ``hubs[0].poll_interval: expected a duration like "5m", got "soon"``.
Relative paths are resolved against the folder of the config file, so the daemon behaves the same
whatever its working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from monitor.config.model import (
    CONFIG_ENV,
    DEFAULT_API_REQUESTS_PER_WINDOW,
    DEFAULT_ATTENTION_HEADS,
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_BUDGET_PER_REPO,
    DEFAULT_BUSY_TIMEOUT_S,
    DEFAULT_CONFIG_NAME,
    DEFAULT_EXECUTOR_KIND,
    DEFAULT_FAMILY_ALPHA_PER_DAY,
    DEFAULT_FP_SECRET_ENV,
    DEFAULT_HF_TOKEN_ENV,
    DEFAULT_HUB_KIND,
    DEFAULT_HUB_NAME,
    DEFAULT_HUB_TIMEOUT_S,
    DEFAULT_INITIAL_LOOKBACK_S,
    DEFAULT_ITEM_TIMEOUT_S,
    DEFAULT_JITTER_S,
    DEFAULT_LAYERS,
    DEFAULT_LEASE_S,
    DEFAULT_LISTEN,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_COMPARISONS_PER_DAY,
    DEFAULT_MAX_REPOS_PER_CYCLE,
    DEFAULT_MIN_VERDICT,
    DEFAULT_OVERLAP_S,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_RATE_WINDOW_S,
    DEFAULT_RESOLVER_REQUESTS_PER_WINDOW,
    DEFAULT_ROWS_PER_LAYER,
    DEFAULT_SLACK_BASE_URL,
    DEFAULT_SLACK_CHANNEL,
    DEFAULT_SLACK_TIMEOUT_S,
    DEFAULT_SLACK_TOKEN_ENV,
    DEFAULT_STORE_PATH,
    DEFAULT_TOKENS,
    DEFAULT_WORKERS,
    EXECUTOR_KINDS,
    HF_ENDPOINT_ENV,
    HUB_KINDS,
    LOG_FORMATS,
    LOG_LEVELS,
    PUBLIC_HF_ENDPOINT,
    AlertsConfig,
    Config,
    ExecutorConfig,
    FingerprintConfig,
    HubConfig,
    LoggingConfig,
    LogSinkConfig,
    QueueConfig,
    ServerConfig,
    SlackConfig,
    StoreConfig,
    default_rate_state_file,
)
from monitor.config.units import format_duration, format_size, parse_duration, parse_size
from monitor.errors import ConfigError
from monitor.secrets import SecretRef

__all__ = ["find_config_path", "load_config", "parse_config"]


T = TypeVar("T")


def _fail(key: str, expected: str, got: object) -> ConfigError:
    shown = f'"{got}"' if isinstance(got, str) else repr(got)
    return ConfigError(f"{key}: expected {expected}, got {shown}")


class _Table:
    """Reads one TOML table key by key and rejects the keys nobody asked for."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise _fail(path or "config", "a table", data)
        self._data: dict[str, Any] = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self._data

    def take(self, name: str, parse: Callable[[object, str], T], default: T) -> T:
        if name not in self._data:
            return default
        return parse(self._data.pop(name), self.key(name))

    def raw(self, name: str) -> object:
        return self._data.pop(name, None)

    def table(self, name: str) -> _Table | None:
        if name not in self._data:
            return None
        return _Table(self._data.pop(name), self.key(name))

    def finish(self) -> None:
        if self._data:
            names = ", ".join(sorted(self._data))
            where = f"in [{self.path}]" if self.path else "at the top level"
            raise ConfigError(f"unknown key{'s' if len(self._data) > 1 else ''} {where}: {names}")


def _duration(value: object, key: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise _fail(key, 'a duration like "5m"', value) from None


def _positive_duration(value: object, key: str) -> float:
    seconds = _duration(value, key)
    if seconds <= 0:
        raise _fail(key, "a duration above zero", value)
    return seconds


def _size(value: object, key: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise _fail(key, 'a size like "64MiB"', value) from None


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _fail(key, "a string", value)
    return value


def _name(value: object, key: str) -> str:
    text = _str(value, key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
        raise _fail(key, "a name of letters, digits, '-', '_' or '.'", value)
    return text


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def _int_in(lo: int, hi: int | None = None) -> Callable[[object, str], int]:
    def parse(value: object, key: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
            raise _fail(key, bound, value)
        return value

    return parse


def _probability(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise _fail(key, "a number between 0 and 1 (exclusive)", value)
    return float(value)


def _choice(*choices: str) -> Callable[[object, str], str]:
    def parse(value: object, key: str) -> str:
        if value not in choices:
            raise _fail(key, " or ".join(f'"{c}"' for c in choices), value)
        return str(value)

    return parse


def _url(value: object, key: str) -> str:
    text = _str(value, key)
    if not re.match(r"^https?://[^\s/]+", text):
        raise _fail(key, "an http(s) URL", value)
    return text


def _path(base: Path) -> Callable[[object, str], Path]:
    def parse(value: object, key: str) -> Path:
        text = _str(value, key)
        if not text:
            raise _fail(key, "a non-empty path", value)
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path

    return parse


def _secret(
    table: _Table, prefix: str, *, base: Path, default_env: str | None, required: bool
) -> SecretRef | None:
    env_key, file_key = f"{prefix}_env", f"{prefix}_file"
    env = table.take(env_key, _str, None)
    file = table.take(file_key, _path(base), None)
    if env is not None and file is not None:
        raise ConfigError(f"{table.key(env_key)} and {table.key(file_key)}: set one of them, not both")
    if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
        raise _fail(table.key(env_key), "an environment variable name", env)
    if env is None and file is None:
        if default_env is None:
            return None
        env = default_env
    key = table.key(env_key if env is not None else file_key)
    return SecretRef(env=env, file=file, required=required, key=key)


def _parse_listen(value: object, key: str) -> tuple[str, str, int]:
    text = _str(value, key).strip()
    if not text:
        return "", "", 0
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _fail(key, 'host:port like "127.0.0.1:9464" (or "" to disable)', value)
    return text, host, int(port)


def _parse_store(table: _Table | None, base: Path) -> StoreConfig:
    t = table or _Table({}, "store")
    path = t.take("path", _path(base), base / DEFAULT_STORE_PATH)
    refs = t.take("refs_dir", _path(base), None)
    busy = t.take("busy_timeout", _positive_duration, DEFAULT_BUSY_TIMEOUT_S)
    t.finish()
    return StoreConfig(path=path, refs_dir=refs or path.with_name(path.name + ".refs"), busy_timeout_s=busy)


def _storage_hosts(value: object, key: str) -> tuple[str, ...]:
    expected = 'a list of host names like ["cdn-lfs.hf.co", ".hf.co"]'
    if not isinstance(value, list):
        raise _fail(key, expected, value)
    hosts: list[str] = []
    for item in value:
        host = item.strip().lower() if isinstance(item, str) else item
        if not isinstance(host, str) or not re.fullmatch(
            r"\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", host
        ):
            raise _fail(key, expected + " (no scheme, port or path)", item)
        hosts.append(host)
    return tuple(hosts)


def _optional_path(base: Path) -> Callable[[object, str], Path | None]:
    def parse(value: object, key: str) -> Path | None:
        if value == "":
            return None
        return _path(base)(value, key)

    return parse


def _parse_hub(t: _Table, *, base: Path, default_endpoint: str, store_path: Path) -> HubConfig:
    name = t.take("name", _name, DEFAULT_HUB_NAME)
    default_state: Path | None = default_rate_state_file(store_path, name)
    kind = t.take("kind", _choice(*HUB_KINDS), DEFAULT_HUB_KIND)
    endpoint = t.take("endpoint", _url, default_endpoint).rstrip("/")
    hub = HubConfig(
        name=name,
        kind=kind,
        endpoint=endpoint,
        poll_interval_s=t.take("poll_interval", _positive_duration, DEFAULT_POLL_INTERVAL_S),
        jitter_s=t.take("jitter", _duration, DEFAULT_JITTER_S),
        token=_secret(t, "token", base=base, default_env=DEFAULT_HF_TOKEN_ENV, required=False),
        overlap_s=t.take("overlap", _duration, DEFAULT_OVERLAP_S),
        initial_lookback_s=t.take("initial_lookback", _duration, DEFAULT_INITIAL_LOOKBACK_S),
        max_repos_per_cycle=t.take("max_repos_per_cycle", _int_in(1, 1_000_000), DEFAULT_MAX_REPOS_PER_CYCLE),
        budget_per_repo=t.take("budget_per_repo", _size, DEFAULT_BUDGET_PER_REPO),
        api_requests_per_window=t.take(
            "api_requests_per_window", _int_in(1), DEFAULT_API_REQUESTS_PER_WINDOW
        ),
        resolver_requests_per_window=t.take(
            "resolver_requests_per_window", _int_in(1), DEFAULT_RESOLVER_REQUESTS_PER_WINDOW
        ),
        rate_window_s=t.take("rate_window", _positive_duration, DEFAULT_RATE_WINDOW_S),
        timeout_s=t.take("timeout", _positive_duration, DEFAULT_HUB_TIMEOUT_S),
        allowed_storage_hosts=t.take("allowed_storage_hosts", _storage_hosts, None),
        rate_state_file=t.take("rate_state_file", _optional_path(base), default_state),
    )
    t.finish()
    if hub.jitter_s >= hub.poll_interval_s:
        raise ConfigError(f"{t.key('jitter')}: must be shorter than poll_interval")
    if hub.budget_per_repo < 64 * 1024:
        raise _fail(
            t.key("budget_per_repo"),
            "at least 64KiB (a safetensors header alone can be that big)",
            format_size(hub.budget_per_repo),
        )
    return hub


def _parse_hubs(raw: object, *, base: Path, default_endpoint: str, store_path: Path) -> tuple[HubConfig, ...]:
    if raw is None:
        return (
            HubConfig(
                endpoint=default_endpoint,
                token=_default_hf_token("hubs[0].token_env"),
                rate_state_file=default_rate_state_file(store_path, DEFAULT_HUB_NAME),
            ),
        )
    if not isinstance(raw, list) or not raw:
        raise _fail("hubs", "one or more [[hubs]] tables", raw)
    hubs = tuple(
        _parse_hub(
            _Table(item, f"hubs[{i}]"), base=base, default_endpoint=default_endpoint, store_path=store_path
        )
        for i, item in enumerate(raw)
    )
    seen: set[str] = set()
    for i, hub in enumerate(hubs):
        if hub.name in seen:
            raise ConfigError(f"hubs[{i}].name: duplicate hub name {hub.name!r}")
        seen.add(hub.name)
    return hubs


def _default_hf_token(key: str) -> SecretRef:
    return SecretRef(env=DEFAULT_HF_TOKEN_ENV, required=False, key=key)


def _parse_alerts(table: _Table | None, *, base: Path) -> AlertsConfig:
    t = table or _Table({}, "alerts")
    min_verdict = t.take("min_verdict", _choice("derived", "inconclusive"), DEFAULT_MIN_VERDICT)
    slack = None
    if (st := t.table("slack")) is not None:
        token = _secret(st, "token", base=base, default_env=DEFAULT_SLACK_TOKEN_ENV, required=True)
        assert token is not None
        slack = SlackConfig(
            channel=st.take("channel", _str, DEFAULT_SLACK_CHANNEL),
            token=token,
            base_url=st.take("base_url", _url, DEFAULT_SLACK_BASE_URL),
            timeout_s=st.take("timeout", _positive_duration, DEFAULT_SLACK_TIMEOUT_S),
        )
        st.finish()
        if not slack.channel.strip():
            raise _fail(st.key("channel"), 'a channel name like "#model-ip"', slack.channel)
    log_sink = LogSinkConfig()
    if (lt := t.table("log")) is not None:
        log_sink = LogSinkConfig(enabled=lt.take("enabled", _bool, True))
        lt.finish()
    t.finish()
    return AlertsConfig(min_verdict=min_verdict, slack=slack, log=log_sink)  # type: ignore[arg-type]


def _parse_fingerprint(table: _Table | None, *, base: Path) -> FingerprintConfig:
    t = table or _Table({}, "fingerprint")
    secret = _secret(t, "secret", base=base, default_env=DEFAULT_FP_SECRET_ENV, required=True)
    assert secret is not None
    fp = FingerprintConfig(
        secret=secret,
        family_alpha_per_day=t.take("family_alpha_per_day", _probability, DEFAULT_FAMILY_ALPHA_PER_DAY),
        max_comparisons_per_day=t.take(
            "max_comparisons_per_day", _int_in(1), DEFAULT_MAX_COMPARISONS_PER_DAY
        ),
        layers=t.take("layers", _int_in(1, 1024), DEFAULT_LAYERS),
        rows_per_layer=t.take("rows_per_layer", _int_in(1, 65536), DEFAULT_ROWS_PER_LAYER),
        tokens=t.take("tokens", _int_in(1, 1_000_000), DEFAULT_TOKENS),
        max_candidates=t.take("max_candidates", _int_in(1, 100_000), DEFAULT_MAX_CANDIDATES),
        attention_heads=t.take("attention_heads", _int_in(0, 64), DEFAULT_ATTENTION_HEADS),
    )
    t.finish()
    return fp


def _parse_executor(table: _Table | None) -> ExecutorConfig:
    t = table or _Table({}, "executor")
    kind = t.take("kind", _choice(*EXECUTOR_KINDS), DEFAULT_EXECUTOR_KIND)
    workers = t.take("workers", _int_in(1, 1024), DEFAULT_WORKERS)
    scheduler = t.take("dask_scheduler", _str, "").strip()
    t.finish()
    if scheduler and not re.match(r"^(tcp|tls|inproc|ucx)://\S+$", scheduler):
        raise _fail(t.key("dask_scheduler"), 'an address like "tcp://host:8786" (or "")', scheduler)
    if scheduler and kind != "dask":
        raise ConfigError(f'{t.key("dask_scheduler")}: only used with kind = "dask"')
    return ExecutorConfig(kind=kind, workers=workers, dask_scheduler=scheduler)  # type: ignore[arg-type]


def _parse_server(table: _Table | None) -> ServerConfig:
    t = table or _Table({}, "server")
    listen, host, port = t.take("listen", _parse_listen, _parse_listen(DEFAULT_LISTEN, "server.listen"))
    allow = t.take("allow_non_loopback", _bool, False)
    t.finish()
    if listen and not allow and not _is_loopback(host):
        raise ConfigError(
            f"{t.key('listen')}: {host!r} is not a loopback address; set allow_non_loopback = true only "
            "inside a container or pod whose network you trust"
        )
    return ServerConfig(listen=listen, host=host, port=port, allow_non_loopback=allow)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_queue(table: _Table | None) -> QueueConfig:
    t = table or _Table({}, "queue")
    queue = QueueConfig(
        max_attempts=t.take("max_attempts", _int_in(1, 1000), DEFAULT_MAX_ATTEMPTS),
        backoff_base_s=t.take("backoff_base", _positive_duration, DEFAULT_BACKOFF_BASE_S),
        backoff_max_s=t.take("backoff_max", _positive_duration, DEFAULT_BACKOFF_MAX_S),
        lease_s=t.take("lease", _positive_duration, DEFAULT_LEASE_S),
        item_timeout_s=t.take("item_timeout", _positive_duration, DEFAULT_ITEM_TIMEOUT_S),
    )
    t.finish()
    if queue.backoff_max_s < queue.backoff_base_s:
        raise ConfigError(f"{t.key('backoff_max')}: must be at least backoff_base")
    if queue.lease_s < 10:
        raise _fail(t.key("lease"), "at least 10s", format_duration(queue.lease_s))
    return queue


def _parse_logging(table: _Table | None) -> LoggingConfig:
    t = table or _Table({}, "logging")
    level = t.take(
        "level",
        lambda v, k: _choice(*LOG_LEVELS)(v.upper() if isinstance(v, str) else v, k),
        DEFAULT_LOG_LEVEL,
    )
    fmt = t.take("format", _choice(*LOG_FORMATS), DEFAULT_LOG_FORMAT)
    t.finish()
    return LoggingConfig(level=level, format=fmt)  # type: ignore[arg-type]


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document and build the `Config`.

    Args:
        data (`Mapping[str, Any]`): the document (``tomllib.loads`` output).
        base_dir (`Path | None`): folder relative paths are resolved against (default: the working
            directory).
        source (`Path | None`): the file it came from, kept for messages and ``config check``.
        environ (`Mapping[str, str] | None`): environment for ``HF_ENDPOINT`` (default: the process's).

    Raises:
        `ConfigError`: naming the first bad key path.
    """
    env = os.environ if environ is None else environ
    base = (base_dir or Path.cwd()).resolve()
    default_endpoint = (env.get(HF_ENDPOINT_ENV) or PUBLIC_HF_ENDPOINT).rstrip("/")
    top = _Table(dict(data), "")
    store = _parse_store(top.table("store"), base)
    config = Config(
        store=store,
        hubs=_parse_hubs(
            top.raw("hubs"), base=base, default_endpoint=default_endpoint, store_path=store.path
        ),
        alerts=_parse_alerts(top.table("alerts"), base=base),
        fingerprint=_parse_fingerprint(top.table("fingerprint"), base=base),
        executor=_parse_executor(top.table("executor")),
        server=_parse_server(top.table("server")),
        queue=_parse_queue(top.table("queue")),
        logging=_parse_logging(top.table("logging")),
        source=source,
    )
    top.finish()
    return config


def find_config_path(
    explicit: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to use: ``explicit``, else ``$HUBSENTRY_CONFIG``, else ``./hubsentry.toml``.

    The file need not exist; `load_config` says how to create it.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return Path(DEFAULT_CONFIG_NAME)


def load_config(
    explicit: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Find, read and validate the config file.

    Raises:
        `ConfigError`: the file is missing (with the command that creates one), unreadable, not
        TOML, or invalid (naming the key path).
    """
    path = find_config_path(explicit, environ=environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file; create one with `hubsentry config init --path {path}` "
            f"(or pass --config PATH, or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, base_dir=path.parent, source=path, environ=environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
