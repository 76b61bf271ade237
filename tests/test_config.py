"""Configuration, secrets and log redaction: validation tables, defaults, round trips, masking."""

from __future__ import annotations

import io
import json
import logging
import tomllib
from pathlib import Path

import pytest

from monitor.config import (
    EXAMPLE_CONFIG,
    Config,
    find_config_path,
    format_duration,
    format_size,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    render_config,
    runtime_env,
)
from monitor.errors import ConfigError
from monitor.logs import setup_logging
from monitor.secrets import MASK, Secret, SecretRef, redact, resolve_secret, secret_status

REPO = Path(__file__).resolve().parents[1]


def parse(text: str, **kw: object) -> Config:
    return parse_config(tomllib.loads(text), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        (" 5m ", 300),
        (300, 300),
        (0.25, 0.25),
        ("0s", 0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "", "5", "5 minutes", "m5", "-5m", -1, True, "5m-", None, "1y"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is the input itself
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("64MiB", 64 << 20),
        ("1GB", 10**9),
        ("512KiB", 512 << 10),
        ("100B", 100),
        ("100", 100),
        (4096, 4096),
        ("1.5KiB", 1536),
        ("2gib", 2 << 30),
        ("1TB", 10**12),
    ],
)
def test_parse_size(text: object, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["big", "64 MeB", "-1", -1, 1.5, True, "MiB"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_size(bad)


@pytest.mark.parametrize("seconds", [0.5, 1, 30, 90, 300, 900, 3600, 5400, 86400, 21600, 1209600])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("nbytes", [1, 1000, 1024, 65536, 64 << 20, 10**9, 3 << 30, 12345])
def test_format_size_round_trips(nbytes: int) -> None:
    assert parse_size(format_size(nbytes)) == nbytes


# ------------------------------------------------------------------------------------------- documents


def test_example_file_is_the_packaged_example() -> None:
    assert (REPO / "config.example.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG


def test_example_parses_with_the_documented_values(tmp_path: Path) -> None:
    config = parse(EXAMPLE_CONFIG, base_dir=tmp_path, environ={})
    assert config.store.path == tmp_path / "hubsentry.db"
    assert config.store.refs_dir == tmp_path / "hubsentry.db.refs"
    (hub,) = config.hubs
    assert (hub.name, hub.kind, hub.endpoint) == ("huggingface", "huggingface", "https://huggingface.co")
    assert (hub.poll_interval_s, hub.jitter_s, hub.overlap_s) == (300, 30, 900)
    assert hub.max_repos_per_cycle == 2000
    assert hub.budget_per_repo == 64 << 20
    assert (hub.api_requests_per_window, hub.resolver_requests_per_window) == (1000, 5000)
    assert hub.token == SecretRef(env="HF_TOKEN", key="hubs[0].token_env")
    assert config.alerts.min_verdict == "derived"
    assert config.alerts.sinks == ("slack:#model-ip", "log")
    assert config.fingerprint.per_comparison_alpha == pytest.approx(1e-9)
    assert (config.fingerprint.layers, config.fingerprint.rows_per_layer, config.fingerprint.tokens) == (
        4,
        64,
        256,
    )
    assert config.executor.kind == "threads"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9464)
    assert (config.queue.max_attempts, config.queue.backoff_base_s, config.queue.backoff_max_s) == (
        6,
        30,
        21600,
    )


def test_empty_document_gives_every_default(tmp_path: Path) -> None:
    config = parse("", base_dir=tmp_path, environ={})
    assert config.hubs[0].name == "huggingface"
    assert config.hubs[0].endpoint == "https://huggingface.co"
    assert config.alerts.slack is None
    assert config.alerts.sinks == ("log",)
    assert config.fingerprint.secret.env == "HUBSENTRY_SECRET"
    assert config.fingerprint.secret.required


def test_hf_endpoint_environment_is_the_default_endpoint(tmp_path: Path) -> None:
    config = parse(
        "[[hubs]]\nname = 'mirror'\n", base_dir=tmp_path, environ={"HF_ENDPOINT": "http://127.0.0.1:9/"}
    )
    assert config.hubs[0].endpoint == "http://127.0.0.1:9"
    explicit = parse("[[hubs]]\nendpoint = 'https://hub.example'\n", environ={"HF_ENDPOINT": "http://x:1"})
    assert explicit.hubs[0].endpoint == "https://hub.example"


def test_render_round_trips_and_masks_secrets(tmp_path: Path) -> None:
    secret_file = tmp_path / "slack"
    secret_file.write_text("xoxb-very-secret-token\n")
    secret_file.chmod(0o600)
    text = EXAMPLE_CONFIG.replace('token_env = "SLACK_BOT_TOKEN"', f'token_file = "{secret_file}"')
    env = {"HF_TOKEN": "hf_abcdefghijklmnop"}
    config = parse(text, base_dir=tmp_path, environ=env)
    rendered = render_config(config, environ=env)
    assert 'token_env = "HF_TOKEN"  # (set)' in rendered
    assert 'secret_env = "HUBSENTRY_SECRET"  # (not set, required)' in rendered
    assert f'token_file = "{secret_file}"  # (set, required)' in rendered
    assert "hf_abcdefghijklmnop" not in rendered
    assert "xoxb-very-secret-token" not in rendered
    assert parse(rendered, base_dir=tmp_path, environ=env) == config


def test_storage_hosts_and_the_shared_rate_state(tmp_path: Path) -> None:
    """``allowed_storage_hosts`` (lower-cased, "." for subdomains) and ``rate_state_file`` (default next to
    the database, per hub; "" keeps the history per process) parse, render and parse back unchanged."""
    config = parse(
        '[store]\npath = "data/h.db"\n[[hubs]]\nname = "hf"\n'
        'allowed_storage_hosts = [".HF.co", "minio.internal"]\n'
        '[[hubs]]\nname = "mirror"\nendpoint = "http://127.0.0.1:9"\nrate_state_file = ""\n',
        base_dir=tmp_path,
        environ={},
    )
    hf, mirror = config.hubs
    assert hf.allowed_storage_hosts == (".hf.co", "minio.internal")
    assert hf.rate_state_file == tmp_path / "data" / "h.db.ratelimit-hf.json"
    assert (mirror.allowed_storage_hosts, mirror.rate_state_file) == (None, None)
    assert parse("", base_dir=tmp_path, environ={}).hubs[0].rate_state_file == (
        tmp_path / "hubsentry.db.ratelimit-huggingface.json"
    )
    rendered = render_config(config, environ={})
    assert 'allowed_storage_hosts = [".hf.co", "minio.internal"]' in rendered
    assert "# allowed_storage_hosts not set" in rendered
    assert parse(rendered, base_dir=tmp_path, environ={}) == config


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "hubsentry.toml"
    path.write_text(
        '[store]\npath = "data/h.db"\nrefs_dir = "/abs/refs"\n[fingerprint]\nsecret_file = "fp"\n'
    )
    config = load_config(path, environ={})
    assert config.store.path == conf_dir.resolve() / "data" / "h.db"
    assert config.store.refs_dir == Path("/abs/refs")
    assert config.fingerprint.secret.file == conf_dir.resolve() / "fp"
    assert config.source == path


BAD = [
    ('[[hubs]]\npoll_interval = "soon"', 'hubs[0].poll_interval: expected a duration like "5m", got "soon"'),
    (
        '[[hubs]]\n[[hubs]]\nname = "b"\njitter = "x"',
        'hubs[1].jitter: expected a duration like "5m", got "x"',
    ),
    (
        '[[hubs]]\nbudget_per_repo = "lots"',
        'hubs[0].budget_per_repo: expected a size like "64MiB", got "lots"',
    ),
    ('[[hubs]]\nbudget_per_repo = "1KiB"', "hubs[0].budget_per_repo: expected at least 64KiB"),
    ("[[hubs]]\nmax_repos_per_cycle = 0", "hubs[0].max_repos_per_cycle: expected an integer from 1"),
    ('[[hubs]]\nmax_repos_per_cycle = "5"', "hubs[0].max_repos_per_cycle: expected an integer"),
    ('[[hubs]]\nkind = "gitlab"', 'hubs[0].kind: expected "huggingface", got "gitlab"'),
    ('[[hubs]]\nendpoint = "ftp://x"', 'hubs[0].endpoint: expected an http(s) URL, got "ftp://x"'),
    ('[[hubs]]\nname = "a b"', "hubs[0].name: expected a name"),
    ('[[hubs]]\npoll_interval = "1m"\njitter = "2m"', "hubs[0].jitter: must be shorter than poll_interval"),
    ('[[hubs]]\ntoken_env = "HF_TOKEN"\ntoken_file = "/x"', "hubs[0].token_env and hubs[0].token_file"),
    ('[[hubs]]\ntoken_env = "1bad"', 'hubs[0].token_env: expected an environment variable name, got "1bad"'),
    ("[[hubs]]\n[[hubs]]", "hubs[1].name: duplicate hub name 'huggingface'"),
    ('hubs = "x"', 'hubs: expected one or more [[hubs]] tables, got "x"'),
    (
        '[[hubs]]\nallowed_storage_hosts = "cdn-lfs.hf.co"',
        'hubs[0].allowed_storage_hosts: expected a list of host names like ["cdn-lfs.hf.co", ".hf.co"], got',
    ),
    (
        '[[hubs]]\nallowed_storage_hosts = ["https://cdn-lfs.hf.co/x"]',
        "hubs[0].allowed_storage_hosts: expected a list of host names",
    ),
    ('[[hubs]]\nallowed_storage_hosts = ["cdn:443"]', "(no scheme, port or path)"),
    ("[[hubs]]\nrate_state_file = 3", "hubs[0].rate_state_file: expected a string, got 3"),
    ("[[hubs]]\npoll_interval = '5m'\npoll_intervall = '5m'", "unknown key in [hubs[0]]: poll_intervall"),
    ("[store]\npaht = 'x'", "unknown key in [store]: paht"),
    ("colour = 1\nsize = 2", "unknown keys at the top level: colour, size"),
    (
        "[alerts]\nmin_verdict = 'maybe'",
        'alerts.min_verdict: expected "derived" or "inconclusive", got "maybe"',
    ),
    ("[alerts.slack]\nchanel = '#x'", "unknown key in [alerts.slack]: chanel"),
    (
        "[alerts.slack]\nbase_url = 'slack.com'",
        'alerts.slack.base_url: expected an http(s) URL, got "slack.com"',
    ),
    ("[alerts.log]\nenabled = 'yes'", 'alerts.log.enabled: expected true or false, got "yes"'),
    (
        "[fingerprint]\nfamily_alpha_per_day = 1.5",
        "fingerprint.family_alpha_per_day: expected a number between 0",
    ),
    ("[fingerprint]\nlayers = 0", "fingerprint.layers: expected an integer from 1 to 1024, got 0"),
    ("[executor]\nkind = 'ray'", 'executor.kind: expected "threads" or "dask", got "ray"'),
    ("[executor]\nworkers = 0", "executor.workers: expected an integer from 1 to 1024, got 0"),
    ("[executor]\ndask_scheduler = 'tcp://h:1'", 'executor.dask_scheduler: only used with kind = "dask"'),
    ("[executor]\nkind='dask'\ndask_scheduler = 'h:1'", "executor.dask_scheduler: expected an address like"),
    ("[server]\nlisten = 'localhost'", 'server.listen: expected host:port like "127.0.0.1:9464"'),
    ("[server]\nlisten = '127.0.0.1:99999'", "server.listen: expected host:port"),
    ("[server]\nlisten = '0.0.0.0:9464'", "server.listen: '0.0.0.0' is not a loopback address"),
    ("[server]\nallow_non_loopback = 1", "server.allow_non_loopback: expected true or false, got 1"),
    ("[queue]\nmax_attempts = 0", "queue.max_attempts: expected an integer from 1 to 1000, got 0"),
    ("[queue]\nbackoff_base = '1h'\nbackoff_max = '1m'", "queue.backoff_max: must be at least backoff_base"),
    ("[queue]\nlease = '1s'", 'queue.lease: expected at least 10s, got "1s"'),
    (
        "[logging]\nlevel = 'LOUD'",
        'logging.level: expected "DEBUG" or "INFO" or "WARNING" or "ERROR", got "LOUD"',
    ),
    ("store = 3", "store: expected a table, got 3"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_values_name_the_key(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir=tmp_path, environ={})
    assert message in str(info.value)


def test_load_config_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hubsentry config init --path .*nope\.toml"):
        load_config(tmp_path / "nope.toml", environ={})


def test_load_config_prefixes_the_file_and_reports_toml_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[store\n")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        load_config(path, environ={})
    path.write_text("[queue]\nlease = 'x'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: queue\.lease: expected a duration"):
        load_config(path, environ={})


def test_config_search_order(tmp_path: Path) -> None:
    assert find_config_path("/a.toml", environ={"HUBSENTRY_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert find_config_path(None, environ={"HUBSENTRY_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert find_config_path(None, environ={}) == Path("hubsentry.toml")


def test_runtime_env() -> None:
    env = runtime_env({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "120000000"})
    assert (env.notify_socket, env.watchdog_usec) == ("@sd", 120_000_000)
    assert runtime_env({"WATCHDOG_USEC": "junk"}) == runtime_env({})


# ------------------------------------------------------------------------------------------- secrets


def test_secret_from_env_is_masked_everywhere() -> None:
    ref = SecretRef(env="T_TOKEN", key="hubs[0].token_env")
    secret = resolve_secret(ref, environ={"T_TOKEN": " hf_env_secret_value \n"})
    assert isinstance(secret, Secret)
    assert secret.reveal() == "hf_env_secret_value"
    assert "hf_env_secret_value" not in repr(secret)
    assert str(secret) == MASK
    assert f"{secret}" == MASK
    assert secret.source == "env:T_TOKEN"


def test_optional_secret_missing_is_none_required_is_an_error() -> None:
    assert resolve_secret(SecretRef(env="NOPE"), environ={}) is None
    assert resolve_secret(None) is None
    with pytest.raises(ConfigError, match=r"fingerprint\.secret_env: the secret is required but environment"):
        resolve_secret(SecretRef(env="NOPE", required=True, key="fingerprint.secret_env"), environ={})


def test_secret_file_permissions_and_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tok"
    path.write_text("file-secret-abc\n")
    path.chmod(0o600)
    ref = SecretRef(file=path, key="alerts.slack.token_file")
    with caplog.at_level(logging.WARNING, logger="monitor.secrets"):
        secret = resolve_secret(ref)
    assert secret is not None
    assert secret.reveal() == "file-secret-abc"
    assert not caplog.records
    assert secret_status(ref) == "set"
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="monitor.secrets"):
        resolve_secret(ref)
    assert "readable by group or others" in caplog.text
    assert "chmod 600" in caplog.text
    assert "file-secret-abc" not in caplog.text
    assert "readable by others" in secret_status(ref)
    missing = SecretRef(file=tmp_path / "missing", key="k")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_secret(missing)
    assert secret_status(missing) == "missing file"
    with pytest.raises(ConfigError, match="not a regular file"):
        resolve_secret(SecretRef(file=tmp_path, key="k"))


def test_secret_ref_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError):
        SecretRef()
    with pytest.raises(ConfigError):
        SecretRef(env="A", file=Path("/b"))


# ------------------------------------------------------------------------------------------- logs


def test_logs_redact_registered_secrets_in_messages_args_and_tracebacks() -> None:
    secret = resolve_secret(SecretRef(env="S"), environ={"S": "sk-redact-me-123"})
    assert secret is not None
    buffer = io.StringIO()
    handler = setup_logging(level="DEBUG", fmt="text", stream=buffer)
    try:
        log = logging.getLogger("hubsentry.test")
        log.info("token is %s", secret.reveal())
        log.warning("inline sk-redact-me-123 here", extra={"repo_id": "org/sk-redact-me-123"})
        try:
            raise RuntimeError("failed with Authorization: Bearer sk-redact-me-123")
        except RuntimeError:
            log.exception("request failed")
        logging.getLogger("httpx2").warning("third party says %s", "sk-redact-me-123")
    finally:
        logging.getLogger().removeHandler(handler)
    text = buffer.getvalue()
    assert "sk-redact-me-123" not in text
    assert text.count(MASK) >= 5
    assert "RuntimeError" in text
    assert redact("x sk-redact-me-123 y") == f"x {MASK} y"


def test_json_logs_carry_context_fields() -> None:
    buffer = io.StringIO()
    handler = setup_logging(level="INFO", fmt="json", stream=buffer)
    try:
        logging.getLogger("hubsentry.test").warning(
            "scan failed", extra={"hub": "hf", "repo_id": "a/b", "item_id": 7}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    record = json.loads(buffer.getvalue().strip())
    assert record["msg"] == "scan failed"
    assert (record["hub"], record["repo_id"], record["item_id"]) == ("hf", "a/b", 7)
    assert record["level"] == "WARNING"
    assert record["ts"].endswith("+00:00")


def test_setup_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first = setup_logging(stream=io.StringIO())
    second = setup_logging(stream=io.StringIO())
    try:
        assert first not in root.handlers
        assert second in root.handlers
        assert len(root.handlers) == before + 1
    finally:
        root.removeHandler(second)


def test_no_environment_reads_outside_the_config_layer() -> None:
    """Only monitor/config/ and monitor/secrets.py read the process environment among these modules."""
    monitor = REPO / "monitor"
    paths = [monitor / name for name in ("scanner.py", "worker.py", "executor.py", "scheduler.py", "logs.py")]
    paths += [*(monitor / "cli").glob("*.py"), *(monitor / "store").glob("*.py")]
    for path in paths:
        text = path.read_text()
        assert "os.environ" not in text, path.name
        assert "getenv" not in text, path.name
