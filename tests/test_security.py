"""Secrets stay put, hostile hub answers are refused, servers bind loopback, downloaded files never run code.

* **Tokens.** A full run (register, daemon, alerts to Slack, operator commands) with a distinctive hub token,
  Slack token and sampling secret — from environment variables, and from files named in the config — then
  every log line, every command's output, the raw bytes of the database, its WAL and the reference files,
  and every Slack message are searched for them: zero hits. The hub token reached the hub origin (a private
  repo was listed and scanned) and never the CDN (``hub.log`` ``auth``).
* **Hostile hub.** Listings with traversal, extra slashes, control characters, non-ASCII and overlong ids;
  model info with traversal, absolute, backslash and NUL paths; redirects to ``file:``, to URLs with
  credentials, with control characters, to a cloud metadata endpoint and a private address. None of it
  reaches a request, a work item or a file name.
* **Code in files.** Checkpoints whose pickle would run a command when unpickled are scanned; the command
  never runs.
* **Loopback.** LocalHub, LocalSlack and the health server refuse non-loopback addresses unless explicitly
  allowed; the health server refuses every state-changing method.
* **Parser limits.** Reproducers of what fuzzing found (`fuzz/`), kept until the parsers are fixed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from test_crash_safety import (
    CHANNEL,
    Daemon,
    Template,
    build_template,
    copy_database,
    daemon_env,
    progress,
    publish,
    read_db,
    running,
    wait_until,
    write_config,
)

from monitor.config import load_config, parse_config
from monitor.errors import ConfigError, FormatError
from monitor.formats.fuzz import exercise
from monitor.health import HealthServer, HealthState
from monitor.hubs.huggingface import LIST_EXPAND
from monitor.localhub import FaultAction, FaultRule, LocalHub, write_repo
from monitor.localslack import LocalSlack
from monitor.metrics import Metrics
from monitor.scheduler import alert_sinks, build_services, pipeline_processor, run_cycle
from monitor.validate import validate_model_repo_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HF_TOKEN = "hf_SecuritySentinelHubToken4q8zW2"
SLACK_TOKEN = "xoxb-SecuritySentinel-SlackToken-7k2m"
FP_SECRET = "fp-SecuritySentinel-SamplingSecret-3n5w"
SECRETS = {"hub token": HF_TOKEN, "Slack token": SLACK_TOKEN, "sampling secret": FP_SECRET}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("protected"))


def leaks(blob: bytes | str, where: str) -> list[str]:
    """Every secret (plain, URL-encoded or base64) found in ``blob``, as readable findings."""
    data = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else blob
    found = []
    for name, secret in SECRETS.items():
        for form in {secret, urllib.parse.quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}:
            if form.encode() in data:
                found.append(f"{name} in {where}")
    return found


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (args, result.stderr)
    return result


# ---------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("source", ["env", "file"])
def test_tokens_reach_only_their_servers(tmp_path: Path, template: Template, source: str) -> None:
    assert leaks(f"x{base64.b64encode(SLACK_TOKEN.encode()).decode()}y", "probe")  # the detector works
    root = tmp_path / "hub"
    root.mkdir()
    uploads = {"thief/guard-ft": "derived", "indie/model": "independent", "hidden/guard": "exact"}
    for i, (repo_id, kind) in enumerate(sorted(uploads.items())):
        publish(root, repo_id, kind, seed=800 + i, protected_dir=template.protected_dir)
    write_repo(root, "hidden/guard", {}, sidecar={"private": True})  # listed and readable only with the token
    state = tmp_path / "state"
    db = state / "hubsentry.db"
    env = daemon_env()
    for key in ("HF_TOKEN", "SLACK_BOT_TOKEN", "HUBSENTRY_SECRET"):
        env.pop(key)
    if source == "env":
        env.update(SENTINEL_HF=HF_TOKEN, SENTINEL_SLACK=SLACK_TOKEN, SENTINEL_FP=FP_SECRET)
        lines = {"hf": 'token_env = "SENTINEL_HF"', "slack": 'token_env = "SENTINEL_SLACK"'}
        fp_line = 'secret_env = "SENTINEL_FP"'
    else:
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for name, value in (("hf", HF_TOKEN), ("slack", SLACK_TOKEN), ("fp", FP_SECRET)):
            path = secrets_dir / name
            path.write_text(value + "\n")
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        lines = {
            "hf": f'token_file = "{secrets_dir / "hf"}"',
            "slack": f'token_file = "{secrets_dir / "slack"}"',
        }
        fp_line = f'secret_file = "{secrets_dir / "fp"}"'
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        config = write_config(
            tmp_path / "hubsentry.toml",
            db=db,
            endpoint=hub.endpoint,
            slack_url=slack.base_url,
            hf_token_line=lines["hf"],
            slack_token_line=lines["slack"],
        )
        config.write_text(config.read_text().replace('secret_env = "HUBSENTRY_SECRET"', fp_line))
        outputs = [cli(config, env, "protect", "add", str(template.protected_dir), "--name", "acme/guard")]
        with running(Daemon(config, tmp_path, env, log_level="DEBUG").start()) as daemon:
            wait_until(
                lambda: progress(db)["items"].get("done", 0) == 3 and len(slack.messages(CHANNEL)) == 2,
                timeout=90,
                what="the scans and both alerts",
            )
            wait_until(lambda: progress(db)["outbox"].get("delivered", 0) == 4, timeout=30, what="delivery")
            for args in (("status", "--json"), ("alerts", "list", "--json"), ("queue", "list", "--json")):
                outputs.append(cli(config, env, *args))
            outputs.append(cli(config, env, "config", "check"))
            daemon.kill()  # leaves the WAL and shared-memory files behind, to be searched too
        files = [p for p in state.rglob("*") if p.is_file()]
        assert any(p.name.endswith("-wal") for p in files)
        assert any(p.suffix == ".npz" or "refs" in str(p) for p in files)

        findings = leaks(daemon.all_logs(), "the daemon log")
        for result in outputs:
            findings += leaks(
                result.stdout + result.stderr, f"`hubsentry {' '.join(result.args[4:6])}` output"
            )
        for path in files:
            findings += leaks(path.read_bytes(), str(path.relative_to(tmp_path)))
        for message in slack.messages(CHANNEL):
            findings += leaks(json.dumps(message.payload, default=str), f"Slack message {message.ts}")
        assert findings == []

        # the hub token went to the hub's origin (the private repo was listed and alerted on), never the CDN
        with read_db(db) as conn:
            alerted = {r[0] for r in conn.execute("SELECT repo_id FROM alerts")}
        assert alerted == {"thief/guard-ft", "hidden/guard"}
        api_origin = hub.endpoint.removeprefix("http://")
        authed = [r for r in hub.log if r.auth]
        assert authed
        assert {r.host for r in authed} == {api_origin}
        cdn = hub.log.find(bucket="cdn")
        assert cdn
        assert not any(r.auth for r in cdn)
        assert all(r.host != api_origin for r in cdn)


# ---------------------------------------------------------------------------------------------- hostile hub


HOSTILE_IDS = [
    "../../etc/passwd",
    "acme/../../x",
    "a/b/c",
    "évil/model",
    "acme/x\r\nSet-Cookie: pwned=1",
    "acme/" + "x" * 200,
    "acme/model.git",
    "/abs/path",
    "acme",
]
HOSTILE_PATHS = [
    "../../../etc/passwd",
    "/etc/shadow",
    "weights\\..\\..\\x.safetensors",
    "x\x00.safetensors",
    "ok/../../y.safetensors",
    "a//b.safetensors",
    "C:/windows/x.safetensors",
    "z" * 2000 + ".safetensors",
    "line\nbreak.safetensors",
]


def fetch_json(url: str, *, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def evil_pickle_checkpoint(marker: Path) -> bytes:
    """A torch-style zip whose ``data.pkl`` runs ``touch marker`` when unpickled with `pickle.load`."""

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Payload()}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_hostile_hub_answers_are_refused(
    tmp_path: Path, template: Template, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key, value in {
        "HF_TOKEN": HF_TOKEN,
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "HUBSENTRY_SECRET": FP_SECRET,
    }.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "hub"
    root.mkdir()
    for i, repo_id in enumerate(
        [
            "acme/paths",
            "acme/redirect-file",
            "acme/redirect-creds",
            "acme/redirect-scheme",
            "acme/redirect-metadata",
            "acme/redirect-private",
        ]
    ):
        publish(root, repo_id, "independent", seed=900 + i, protected_dir=template.protected_dir)
    marker = tmp_path / "code-was-executed"
    write_repo(root, "acme/pickle-bomb", {"pytorch_model.bin": evil_pickle_checkpoint(marker)})
    write_repo(root, "acme/legacy-pickle", {"model.pt": pickle.dumps({"w": [1, 2]}, protocol=2)})
    db = tmp_path / "hubsentry.db"
    copy_database(template.db, db)
    with LocalHub(root, token=HF_TOKEN) as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
        expand = "".join(f"&expand={field}" for field in LIST_EXPAND)
        listing = fetch_json(f"{hub.endpoint}/api/models?sort=createdAt&limit=100{expand}", token=HF_TOKEN)
        commit = {item["id"]: item["sha"] for item in listing}
        hostile = [{**listing[0], "id": rid, "_id": "x"} for rid in HOSTILE_IDS]
        hostile.append({**listing[0], "id": "acme/bad-sha", "sha": "../../../../etc"})
        # the listing itself is hostile (both passes get the doctored page)
        hub.faults.add(
            FaultRule("GET", r"^/api/models$", FaultAction.status(200, body=json.dumps(listing + hostile)))
        )
        info = fetch_json(
            f"{hub.endpoint}/api/models/acme/paths/revision/{commit['acme/paths']}?blobs=true", token=HF_TOKEN
        )
        info["siblings"] += [{"rfilename": p, "size": 10, "blobId": "1" * 40} for p in HOSTILE_PATHS]
        hub.faults.add(
            FaultRule("GET", r"^/api/models/acme/paths/revision/", FaultAction.status(200, body=info))
        )
        for repo, location in (
            ("redirect-file", "file:///etc/passwd"),
            ("redirect-creds", f"http://user:{HF_TOKEN}@localhost:{hub.endpoint.rsplit(':', 1)[1]}/cdn/x"),
            ("redirect-scheme", "ftp://localhost/cdn/x"),
            # a cloud metadata endpoint and a LAN address: never fetched, whatever the hub says
            ("redirect-metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
            ("redirect-private", "http://10.0.0.1/cdn/x"),
        ):
            hub.faults.add(
                FaultRule(
                    "GET", f"^/acme/{repo}/resolve/", FaultAction.status(302, headers={"Location": location})
                )
            )
        config = load_config(
            write_config(tmp_path / "c.toml", db=db, endpoint=hub.endpoint, slack_url=slack.base_url)
        )
        services = build_services(
            config, processor_factory=pipeline_processor, stop=threading.Event(), sinks=alert_sinks(config)
        )
        try:
            report = run_cycle(services)
        finally:
            services.close()
    assert not marker.exists(), "a pickle in a downloaded checkpoint was executed"
    with read_db(db) as conn:
        items = {
            r[0]: (r[1], r[2] or "")
            for r in conn.execute("SELECT repo_id, state, last_error FROM work_items")
        }
        outcomes = {
            r[0]: json.loads(r[1] or "{}")
            for r in conn.execute("SELECT repo_id, outcome_json FROM work_items")
        }
    assert set(items) == set(commit), "only valid listed repos become work items"
    for record in hub.log:
        for bad in ("..", "etc/passwd", "shadow", "\r", "\n", "\x00", "évil", "\\", "windows", "zzzz"):
            assert bad not in record.path, (bad, record.path)
    requested = {r.path.rsplit("/", 1)[-1] for r in hub.log if "/resolve/" in r.path}
    assert requested <= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "pytorch_model.bin",
        "model.pt",
    }
    assert any("skipping a listed repo with an invalid id" in r.getMessage() for r in caplog.records)
    assert any(
        "skipped" in r.getMessage() and "malformed file entries" in r.getMessage() for r in caplog.records
    )
    assert items["acme/paths"][0] == "done"
    for repo in (
        "acme/redirect-file",
        "acme/redirect-creds",
        "acme/redirect-scheme",
        "acme/redirect-metadata",
        "acme/redirect-private",
    ):
        state, error = items[repo]
        assert state in ("failed", "dead"), (repo, items[repo])
        assert "refused" in error or "redirect" in error, error
        assert HF_TOKEN not in error
    assert "169.254.169.254, a link-local address" in items["acme/redirect-metadata"][1]
    assert "10.0.0.1, a private address" in items["acme/redirect-private"][1]
    notes = " ".join(outcomes["acme/pickle-bomb"].get("notes", ())) + items["acme/pickle-bomb"][1]
    assert items["acme/pickle-bomb"][0] == "done"
    assert "pickle" in notes.lower() or "not readable" in notes, notes
    assert items["acme/legacy-pickle"][0] == "done"
    assert not report.ok  # the refused redirects are failures, retried (and eventually dead), not silence


@pytest.mark.parametrize(
    "repo_id", ["acme/x\r\n2026-01-01T00:00:00.000Z WARNING monitor.worker: forged", "a/b\x1b[2J"]
)
def test_hostile_ids_cannot_forge_log_lines(repo_id: str) -> None:
    with pytest.raises(ValueError, match="repo id") as refused:
        validate_model_repo_id(repo_id)
    assert not any(ch in str(refused.value) for ch in "\r\n\x1b"), str(refused.value)


# ---------------------------------------------------------------------------------------------- loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.10.20", "::", "example.com"])
def test_servers_refuse_non_loopback_addresses(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalHub(tmp_path, host=host)
    with pytest.raises(ValueError, match="loopback"):
        LocalSlack(host=host)
    metrics = Metrics()
    with pytest.raises(ConfigError, match="loopback"):
        HealthServer(HealthState(hubs={}, metrics=metrics), metrics, host=host, port=0)
    listen = f"[{host}]:9464" if ":" in host else f"{host}:9464"
    with pytest.raises(ConfigError, match="loopback"):
        parse_config({"server": {"listen": listen}})


def test_defaults_bind_loopback_and_the_health_server_changes_nothing(tmp_path: Path) -> None:
    config = parse_config({})
    assert config.server.host == "127.0.0.1"
    assert not config.server.allow_non_loopback
    metrics = Metrics()
    with HealthServer(HealthState(hubs={}, metrics=metrics), metrics, host="127.0.0.1", port=0) as server:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            request = urllib.request.Request(f"{server.url}/metrics", data=b"x", method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 405
    with LocalHub(tmp_path) as hub:
        assert hub.endpoint.startswith("http://127.0.0.1:")
        request = urllib.request.Request(f"{hub.endpoint}/api/models", data=b"{}", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405  # no write API exists, so no state can be changed


# ---------------------------------------------------------------------------------------------- parser limits

GGUF_UNBOUNDED_DIM = base64.b64decode(
    "R0dVRgMAAAABAAAAAAAAAAAAAAAAAAAAEwAAAAAAAABibGsuMC5hdHRuX3Eud2VpZ2h0AgAAAAAAAAAAAAAAANcAABQAAJ0AAAAA"
    "AAAAAAAAAAAAAAAA////////////////////////////////////JP//////////////////////////////////////////"
    "////////////////////////Ov//AAAAAAAAAAAAADw="
)
"""Found by ``fuzz/fuzz_gguf.py``: tensor shape ``(11313042349854086912, 0)`` is accepted (product 0)."""
GGUF_UNBOUNDED_ROW = base64.b64decode(
    "R0dVRgMAAAABAAAAAAAAAAAAAAAAAAAAEwAAAAAAAABibGsuMC5hdHRuX3Eud2VpZw5iAwAAAAAAAAAAAAAAAADXAAAT///6AAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAPA=="
)
"""Found by the long GGUF campaign: shape ``(250, 18446483489467858944, 0)``; the row reshape fails."""


def safetensors_with_shape(shape: list[int]) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("gguf", GGUF_UNBOUNDED_DIM),
        ("gguf", GGUF_UNBOUNDED_ROW),
        ("safetensors", safetensors_with_shape([0, 2**70])),
    ],
    ids=["gguf-huge-rows-zero-cols", "gguf-huge-row-dim", "safetensors-zero-rows-huge-cols"],
)
def test_parsers_bound_every_dimension(fmt: str, data: bytes) -> None:
    try:
        parsed = exercise(data, fmt)
    except FormatError:  # pragma: no cover - exercise returns None for FormatError
        parsed = None
    if parsed is not None:
        for info in parsed.tensors.values():
            assert all(0 <= d < 2**48 for d in info.shape), info.shape
