"""Writing configuration back out: the effective config (secrets masked) and the example file.

``hubsentry config check`` prints `render_config` so an operator sees every default that applies, and
for each secret only where it comes from and whether it is there (``token_env = "HF_TOKEN"  # (set)``).
``hubsentry config init`` writes `EXAMPLE_CONFIG`, which is kept identical to ``config.example.toml``
at the repository root by a test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from monitor.config.model import Config, HubConfig
from monitor.config.units import format_duration, format_size
from monitor.secrets import SecretRef, secret_status

__all__ = ["EXAMPLE_CONFIG", "render_config"]

EXAMPLE_CONFIG = """\
# HubSentry configuration. Copy to hubsentry.toml (or run `hubsentry config init`), edit, then check it
# with `hubsentry config check`. Unknown keys are errors. Relative paths are relative to this file.
# Durations: "500ms", "30s", "5m", "1h30m", "1d". Sizes: "64KiB", "64MiB", "1GB".
# Secrets are never written here: name the environment variable (*_env) or the file (*_file) holding them.

[store]
path = "hubsentry.db"                # SQLite file on a LOCAL disk (WAL does not work on NFS)
# refs_dir = "hubsentry.db.refs"     # registry reference arrays; default "<path>.refs"
busy_timeout = "30s"

[[hubs]]
name = "huggingface"                 # stored in cursors, work items and alerts: never rename it
kind = "huggingface"
endpoint = "https://huggingface.co"  # default: $HF_ENDPOINT if set, else the public hub
poll_interval = "5m"
jitter = "30s"
token_env = "HF_TOKEN"               # or token_file = "/run/secrets/hf_token"; anonymous limits are lower
overlap = "15m"                      # each walk re-checks this far below its cursor (late-indexed repos)
initial_lookback = "1h"              # how far back the very first walk goes
max_repos_per_cycle = 2000           # new repos enqueued per listing pass and cycle at most
budget_per_repo = "64MiB"            # hard cap of bytes read per repo commit
api_requests_per_window = 1000       # our own ceiling (HF: 5-minute windows)
resolver_requests_per_window = 5000
rate_window = "5m"
timeout = "30s"                      # per HTTP request
# allowed_storage_hosts = [".hf.co"] # where LFS redirects may lead ("." = subdomains; may be private);
#                                    # unset: any host, but only if all its addresses are public
# rate_state_file = "hubsentry.db.ratelimit-huggingface.json"   # the default: request history shared by
#                                    # the processes on this host, so the ceilings hold across restarts

[alerts]
min_verdict = "derived"              # or "inconclusive"

[alerts.slack]
channel = "#model-ip"
token_env = "SLACK_BOT_TOKEN"        # or token_file = "/run/secrets/slack_token"
base_url = "https://slack.com/api/"
timeout = "10s"

[alerts.log]
enabled = true                       # also log every alert as a structured line

[fingerprint]
# secret sampling seed: uploaders must not know which rows are read
secret_env = "HUBSENTRY_SECRET"      # or secret_file = "/run/secrets/hubsentry_secret"
family_alpha_per_day = 0.01          # family-wise error budget per day
max_comparisons_per_day = 10000000   # Bonferroni divisor: per-comparison alpha = 1e-9
layers = 4                           # MLP layers sampled per suspect
rows_per_layer = 64                  # MLP units sampled per layer
tokens = 256                         # embedding rows (token block) per tokenizer
max_candidates = 16                  # protected models tested per upload after screening
attention_heads = 1                  # query heads read to confirm flagged matches (names head-level
                                     # obfuscations; adds one head of Q, K, V); 0 = off

[executor]
kind = "threads"                     # or "dask" (pip install 'hubsentry[dask]')
workers = 4
dask_scheduler = ""                  # tcp://host:8786 ; empty = in-process LocalCluster

[server]
listen = "127.0.0.1:9464"            # /livez /readyz /metrics ; "" disables
allow_non_loopback = false           # true only in a container/pod: listen = "0.0.0.0:9464"

[queue]
max_attempts = 6                     # then the item is "dead": hubsentry queue list --state dead
backoff_base = "30s"
backoff_max = "6h"
lease = "5m"                         # a crashed worker's item is picked up again after this
item_timeout = "30m"                 # a scan running longer is abandoned and retried

[logging]
level = "INFO"                       # DEBUG, INFO, WARNING, ERROR
format = "text"                      # or "json" (one object per line, for log shippers)
"""


def _q(value: str | Path) -> str:
    """A TOML basic string (JSON escaping is valid TOML once non-ASCII stays literal)."""
    return json.dumps(str(value), ensure_ascii=False)


def _secret_line(prefix: str, ref: SecretRef | None, environ: Mapping[str, str] | None) -> str:
    if ref is None:
        return f"# {prefix}_env / {prefix}_file not configured"
    status = secret_status(ref, environ=environ)
    required = ", required" if ref.required else ""
    if ref.env is not None:
        return f"{prefix}_env = {_q(ref.env)}  # ({status}{required})"
    assert ref.file is not None
    return f"{prefix}_file = {_q(ref.file)}  # ({status}{required})"


def _hub_lines(hub: HubConfig, environ: Mapping[str, str] | None) -> list[str]:
    return [
        "[[hubs]]",
        f"name = {_q(hub.name)}",
        f"kind = {_q(hub.kind)}",
        f"endpoint = {_q(hub.endpoint)}",
        f"poll_interval = {_q(format_duration(hub.poll_interval_s))}",
        f"jitter = {_q(format_duration(hub.jitter_s))}",
        _secret_line("token", hub.token, environ),
        f"overlap = {_q(format_duration(hub.overlap_s))}",
        f"initial_lookback = {_q(format_duration(hub.initial_lookback_s))}",
        f"max_repos_per_cycle = {hub.max_repos_per_cycle}",
        f"budget_per_repo = {_q(format_size(hub.budget_per_repo))}",
        f"api_requests_per_window = {hub.api_requests_per_window}",
        f"resolver_requests_per_window = {hub.resolver_requests_per_window}",
        f"rate_window = {_q(format_duration(hub.rate_window_s))}",
        f"timeout = {_q(format_duration(hub.timeout_s))}",
        (
            "# allowed_storage_hosts not set: storage redirects may go to any host whose addresses are public"
            if hub.allowed_storage_hosts is None
            else f"allowed_storage_hosts = [{', '.join(_q(h) for h in hub.allowed_storage_hosts)}]"
        ),
        f"rate_state_file = {_q(hub.rate_state_file) if hub.rate_state_file is not None else _q('')}",
        "",
    ]


def render_config(config: Config, *, environ: Mapping[str, str] | None = None) -> str:
    """The effective configuration as TOML, every default spelled out, secrets masked.

    The output parses back (with the same environment) to an equal `Config`.
    """
    src = str(config.source) if config.source is not None else "built-in defaults"
    out = [f"# effective configuration ({src})", ""]
    out += [
        "[store]",
        f"path = {_q(config.store.path)}",
        f"refs_dir = {_q(config.store.refs_dir)}",
        f"busy_timeout = {_q(format_duration(config.store.busy_timeout_s))}",
        "",
    ]
    for hub in config.hubs:
        out += _hub_lines(hub, environ)
    alerts = config.alerts
    out += ["[alerts]", f"min_verdict = {_q(alerts.min_verdict)}", ""]
    if alerts.slack is not None:
        out += [
            "[alerts.slack]",
            f"channel = {_q(alerts.slack.channel)}",
            _secret_line("token", alerts.slack.token, environ),
            f"base_url = {_q(alerts.slack.base_url)}",
            f"timeout = {_q(format_duration(alerts.slack.timeout_s))}",
            "",
        ]
    out += ["[alerts.log]", f"enabled = {'true' if alerts.log.enabled else 'false'}", ""]
    fp = config.fingerprint
    out += [
        "[fingerprint]",
        _secret_line("secret", fp.secret, environ),
        f"family_alpha_per_day = {fp.family_alpha_per_day!r}",
        f"max_comparisons_per_day = {fp.max_comparisons_per_day}  # per-comparison alpha = "
        f"{fp.per_comparison_alpha:.3g}",
        f"layers = {fp.layers}",
        f"rows_per_layer = {fp.rows_per_layer}",
        f"tokens = {fp.tokens}",
        f"max_candidates = {fp.max_candidates}",
        f"attention_heads = {fp.attention_heads}",
        "",
        "[executor]",
        f"kind = {_q(config.executor.kind)}",
        f"workers = {config.executor.workers}",
        f"dask_scheduler = {_q(config.executor.dask_scheduler)}",
        "",
        "[server]",
        f"listen = {_q(config.server.listen)}",
        f"allow_non_loopback = {'true' if config.server.allow_non_loopback else 'false'}",
        "",
        "[queue]",
        f"max_attempts = {config.queue.max_attempts}",
        f"backoff_base = {_q(format_duration(config.queue.backoff_base_s))}",
        f"backoff_max = {_q(format_duration(config.queue.backoff_max_s))}",
        f"lease = {_q(format_duration(config.queue.lease_s))}",
        f"item_timeout = {_q(format_duration(config.queue.item_timeout_s))}",
        "",
        "[logging]",
        f"level = {_q(config.logging.level)}",
        f"format = {_q(config.logging.format)}",
    ]
    return "\n".join(out) + "\n"
