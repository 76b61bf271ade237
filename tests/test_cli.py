"""The ``hubsentry`` CLI through click's runner, on real config files, stores and local servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from monitor.cli import COMMANDS, EXIT_CONFIG, EXIT_PROBLEM, EXIT_STORE, cli
from monitor.cli.base import CommandError, lead_function
from monitor.findings import Finding, ScanOutcome
from monitor.localhub import LocalHub, write_repo
from monitor.localslack import LocalSlack
from monitor.store import (
    NewItem,
    ProtectedFile,
    ProtectedModel,
    Store,
    add_protected,
    claim_due,
    enqueue,
    fail,
    record_outcome,
    to_iso,
)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
SECRETS = {
    "HUBSENTRY_SECRET": "fp-cli-secret-0123456789",
    "SLACK_BOT_TOKEN": "xoxb-cli-token-0123456789",
    "HF_TOKEN": "hf_cli_token_0123456789",
}


@pytest.fixture(autouse=True)
def _detach_cli_log_handler() -> Iterator[None]:
    """The CLI installs its log handler on the runner's stream; remove it once the test is done."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "hubsentry":
            root.removeHandler(handler)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    ctx = click.Context(group)
    found: dict[str, click.Command] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, f"{full} "))
        else:
            found[full] = command
    return found


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "hubsentry.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "h.db"}"\n[[hubs]]\nname = "hf"\nendpoint = "http://127.0.0.1:9"\n'
    )
    return path


# ------------------------------------------------------------------------------------------- help and docs


def test_every_command_has_help_with_an_example() -> None:
    commands = leaf_commands(cli)
    for name in COMMANDS:
        assert name in commands, name
        assert commands[name].help, name
        result = invoke(*name.split(), "--help")
        assert result.exit_code == 0, name
        if not name.startswith("hub "):  # `hub` belongs to the local hub; it documents itself
            assert "Example" in commands[name].help, name


def test_the_command_list_matches_the_cli() -> None:
    ours = {name for name in leaf_commands(cli) if not name.startswith("hub ")} | {"hub serve"}
    assert ours == set(COMMANDS)


@pytest.mark.skipif(not (REPO / "README.md").exists(), reason="README.md is written by the lead")
def test_every_command_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [name for name in COMMANDS if f"hubsentry {name}" not in readme]
    assert missing == []


def test_version() -> None:
    assert "hubsentry, version" in invoke("--version").output


# ------------------------------------------------------------------------------------------- config


def test_config_init_then_check(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hubsentry.toml"
    first = invoke("--config", str(path), "config", "init")
    assert first.exit_code == 0
    assert path.read_text() == (REPO / "config.example.toml").read_text()
    assert invoke("--config", str(path), "config", "init").exit_code == EXIT_PROBLEM
    assert invoke("config", "init", "--path", str(path), "--force").exit_code == 0

    missing = invoke("--config", str(path), "config", "check", env={k: "" for k in SECRETS})
    assert missing.exit_code == EXIT_PROBLEM
    assert (
        "problem: alerts.slack.token_env: environment variable SLACK_BOT_TOKEN is not set" in missing.stderr
    )
    assert "problem: fingerprint.secret_env" in missing.stderr
    assert 'token_env = "HF_TOKEN"  # (not set)' in missing.stdout

    ok = invoke("--config", str(path), "config", "check", env=SECRETS)
    assert ok.exit_code == 0
    assert 'token_env = "SLACK_BOT_TOKEN"  # (set, required)' in ok.stdout
    for value in SECRETS.values():
        assert value not in ok.output


def test_missing_or_invalid_config_exits_2_and_says_why(tmp_path: Path) -> None:
    missing = invoke("--config", str(tmp_path / "none.toml"), "status")
    assert missing.exit_code == EXIT_CONFIG
    assert "hubsentry config init" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hubs]]\npoll_interval = "soon"\n')
    result = invoke("--config", str(bad), "queue", "list")
    assert result.exit_code == EXIT_CONFIG
    assert 'hubs[0].poll_interval: expected a duration like "5m", got "soon"' in result.stderr


def test_a_broken_database_exits_3(tmp_path: Path) -> None:
    (tmp_path / "h.db").write_bytes(b"this is not a database" * 100)
    path = tmp_path / "c.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "h.db"}"\n')
    result = invoke("--config", str(path), "status")
    assert result.exit_code == EXIT_STORE
    assert "not a SQLite database" in result.stderr


def test_db_migrate(config_file: Path) -> None:
    listed = invoke("--config", str(config_file), "db", "migrate", "--list")
    assert listed.stdout.splitlines() == [
        "m001_enable_wal  pending",
        "m002_core_tables  pending",
        "m003_sink_health  pending",
    ]
    assert (
        "applied: m001_enable_wal, m002_core_tables, m003_sink_health"
        in invoke("--config", str(config_file), "db", "migrate").stdout
    )
    assert "schema is current" in invoke("--config", str(config_file), "db", "migrate").stdout
    assert "pending" not in invoke("--config", str(config_file), "db", "migrate", "--list").stdout


# ---------------------------------------------------------------------------------- queue, alerts, status


def seeded(tmp_path: Path) -> dict[str, object]:
    """A store with one dead item, one pending item and one alert."""
    with Store(tmp_path / "h.db") as store:
        store.write(
            lambda db: enqueue(
                db,
                [
                    NewItem("hf", "dead/one", "a" * 40),
                    NewItem("hf", "thief/copy", "b" * 40),
                    NewItem("hf", "wait/two", "c" * 40),
                ],
                now=T0,
            )
        )
        dead, copy = store.write(
            lambda db: claim_due(db, owner="w", limit=2, lease_s=60, max_attempts=1, now=T0)
        )
        store.write(
            lambda db: fail(
                db, dead.id, owner="w", error="KeyError: boom", retry_at=T0, max_attempts=1, now=T0
            )
        )
        finding = Finding(
            protected="acme/guard",
            owner="ip",
            verdict="derived",
            p_value=1e-30,
            log10_p=-30.0,
            null="independent",
            transform="identity",
            matched="64/64",
            severity="critical",
        )
        outcome = ScanOutcome(
            hub="hf", repo_id="thief/copy", commit="b" * 40, url="http://hub/thief/copy", findings=(finding,)
        )
        recorded = store.write(lambda db: record_outcome(db, copy, outcome, sinks=["log"], owner="w", now=T0))
        store.write(
            lambda db: add_protected(
                db,
                ProtectedModel(
                    name="acme/guard",
                    owner="ip",
                    source="/models/guard",
                    source_commit=None,
                    algo="v1",
                    arch_json="{}",
                    signature_json="{}",
                    reference_path=None,
                    reference_sha256=None,
                    created_at=T0,
                    files=(ProtectedFile("model.safetensors", 10, "ab" * 32),),
                ),
            )
        )
    return {"dead_id": dead.id, "alert_key": recorded.new_alerts[0]}


def test_queue_list_and_requeue(tmp_path: Path, config_file: Path) -> None:
    ids = seeded(tmp_path)
    cfg = ["--config", str(config_file)]
    listed = json.loads(invoke(*cfg, "queue", "list", "--state", "dead", "--json").stdout)
    assert [(i["id"], i["repo_id"], i["last_error"]) for i in listed] == [
        (ids["dead_id"], "dead/one", "KeyError: boom")
    ]
    table = invoke(*cfg, "queue", "list").stdout
    assert "dead/one" in table
    assert "wait/two" in table
    assert invoke(*cfg, "queue", "requeue").exit_code == 2
    unknown = invoke(*cfg, "queue", "requeue", "999")
    assert (unknown.exit_code, "not requeued" in unknown.stderr) == (EXIT_PROBLEM, True)
    assert "requeued 1 item(s)" in invoke(*cfg, "queue", "requeue", "--dead").stdout
    assert json.loads(invoke(*cfg, "queue", "list", "--state", "dead", "--json").stdout) == []


def test_alerts_list_ack_resolve(tmp_path: Path, config_file: Path) -> None:
    key = str(seeded(tmp_path)["alert_key"])
    cfg = ["--config", str(config_file)]
    (alert,) = json.loads(invoke(*cfg, "alerts", "list", "--json").stdout)
    assert alert["alert_key"] == key
    assert alert["triage"] == {"state": "new", "resolution": None, "reason": None}
    assert "thief/copy" in invoke(*cfg, "alerts", "list").stdout
    assert f"acknowledged {key}" in invoke(*cfg, "alerts", "ack", key[:10]).stdout
    assert "already acknowledged" in invoke(*cfg, "alerts", "ack", key[:10]).stdout
    assert (
        invoke(*cfg, "alerts", "resolve", key[:10], "--as", "true-positive").exit_code == 2
    )  # --reason required
    resolved = invoke(
        *cfg, "alerts", "resolve", key[:10], "--as", "true-positive", "--reason", "takedown filed"
    )
    assert resolved.exit_code == 0
    (alert,) = json.loads(invoke(*cfg, "alerts", "list", "--state", "resolved", "--json").stdout)
    assert alert["triage"] == {"state": "resolved", "resolution": "true-positive", "reason": "takedown filed"}
    unknown = invoke(*cfg, "alerts", "ack", "ffffffffff")
    assert unknown.exit_code == EXIT_PROBLEM
    assert "no alert with key" in unknown.stderr


def test_alerts_requeue_dead(tmp_path: Path, config_file: Path) -> None:
    """Dead letters go back to pending (all, one sink's, or one alert's by key prefix); nothing else moves."""
    key = str(seeded(tmp_path)["alert_key"])
    with Store(tmp_path / "h.db") as store:
        store.write(
            lambda db: db.execute(
                "INSERT INTO outbox (alert_key, sink, state, attempts, next_attempt_at, last_error, "
                "created_at) VALUES (?, 'slack:#model-ip', 'dead', 3, ?, 'token_revoked', ?)",
                [key, to_iso(T0), to_iso(T0)],
            )
        )
        store.write(lambda db: db.execute("UPDATE outbox SET state = 'dead' WHERE sink = 'log'"))
    cfg = ["--config", str(config_file)]

    def states() -> dict[str, str]:
        with Store(tmp_path / "h.db") as store, store.read() as db:
            return {r["sink"]: r["state"] for r in db.query("SELECT sink, state FROM outbox")}

    none = invoke(*cfg, "alerts", "requeue-dead", "--sink", "webhook")
    assert none.exit_code == EXIT_PROBLEM
    assert "no dead letters matched (sink webhook)" in none.stderr
    assert invoke(*cfg, "alerts", "requeue-dead", "--key", "ffffffffff").exit_code == EXIT_PROBLEM
    one = invoke(*cfg, "alerts", "requeue-dead", "--sink", "log", "--key", key[:10])
    assert one.exit_code == 0, one.output
    assert f"requeued 1 dead letter(s) (sink log, alert {key})" in one.stdout
    assert states() == {"log": "pending", "slack:#model-ip": "dead"}
    rest = invoke(*cfg, "alerts", "requeue-dead")
    assert "requeued 1 dead letter(s)" in rest.stdout
    assert states() == {"log": "pending", "slack:#model-ip": "pending"}
    with Store(tmp_path / "h.db") as store, store.read() as db:
        (error,) = [r["last_error"] for r in db.query("SELECT last_error FROM outbox WHERE sink != 'log'")]
    assert error.startswith("requeued at ")
    assert error.endswith("token_revoked")


def test_status_and_protect_list(tmp_path: Path, config_file: Path) -> None:
    seeded(tmp_path)
    cfg = ["--config", str(config_file)]
    status = json.loads(invoke(*cfg, "status", "--json").stdout)
    assert status["queue"]["counts"] == {"pending": 1, "running": 0, "done": 1, "failed": 0, "dead": 1}
    assert status["dead"][0]["repo_id"] == "dead/one"
    assert status["alerts"] == {"new": 1, "acked": 0, "resolved": 0}
    assert status["outbox"][0]["sink"] == "log"
    assert status["outbox"][0]["pending"] == 1
    human = invoke(*cfg, "status").stdout
    assert "dead letters" in human
    assert "outbox" in human
    (model,) = json.loads(invoke(*cfg, "protect", "list", "--json").stdout)
    assert (model["name"], model["files"][0]["sha256"]) == ("acme/guard", "ab" * 32)
    assert "acme/guard" in invoke(*cfg, "protect", "list").stdout


# ------------------------------------------------------------------------------------------- notify, scan


def test_notify_test_through_log_and_local_slack(tmp_path: Path) -> None:
    with LocalSlack(token=SECRETS["SLACK_BOT_TOKEN"], channels=["model-ip"]) as slack:
        path = tmp_path / "c.toml"
        path.write_text(
            f'[store]\npath = "{tmp_path / "h.db"}"\n[alerts.slack]\nchannel = "#model-ip"\n'
            f'base_url = "{slack.base_url}"\n'
        )
        ok = invoke("--config", str(path), "notify", "test", env=SECRETS)
        assert ok.exit_code == 0, ok.output
        assert "slack:#model-ip: ok" in ok.stdout
        assert "log: ok" in ok.stdout
        assert len(slack.messages("model-ip")) == 1
        only_log = invoke("--config", str(path), "notify", "test", "--sink", "log", env=SECRETS)
        assert only_log.exit_code == 0
        assert len(slack.messages("model-ip")) == 1
        assert invoke("--config", str(path), "notify", "test", "--sink", "nope", env=SECRETS).exit_code == 1
        bad = invoke(
            "--config", str(path), "notify", "test", env={**SECRETS, "SLACK_BOT_TOKEN": "xoxb-wrong-000"}
        )
        assert bad.exit_code == EXIT_PROBLEM
        assert "slack:#model-ip: FAILED" in bad.stderr
        assert "xoxb-wrong-000" not in bad.output
        unset = invoke("--config", str(path), "notify", "test", env={"SLACK_BOT_TOKEN": ""})
        assert unset.exit_code == EXIT_CONFIG


def test_scan_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    write_repo(root, "acme/guard", {"config.json": {"hidden_size": 8}})
    write_repo(root, "thief/guard-copy", {"config.json": {"copy_of": "acme/guard"}})
    with LocalHub(root, token=SECRETS["HF_TOKEN"]) as hub:
        path = tmp_path / "c.toml"
        path.write_text(
            f'[store]\npath = "{tmp_path / "h.db"}"\n[[hubs]]\nname = "hf"\nendpoint = "{hub.endpoint}"\n'
            'initial_lookback = "1d"\n'
        )
        cfg = ["--config", str(path)]
        processor = ["--processor", "test_scheduler:make_processor"]
        first = invoke(*cfg, "scan", "--json", *processor, env=SECRETS)
        assert first.exit_code == 0, first.output
        report = json.loads(first.stdout)
        assert report["ok"]
        assert report["drain"]["done"] == 2
        assert len(report["drain"]["new_alerts"]) == 1
        assert report["delivery"]["delivered"] == 1  # the log sink
        (alert,) = json.loads(invoke(*cfg, "alerts", "list", "--json").stdout)
        assert (alert["schema"], alert["repo_id"], alert["protected"]) == (
            "hubsentry.alert/1",
            "thief/guard-copy",
            "acme/guard",
        )
        assert alert["url"].endswith("/thief/guard-copy/tree/" + alert["commit"])
        again = invoke(*cfg, "scan", *processor, env=SECRETS)
        assert again.exit_code == 0
        assert "0 claimed" in again.stdout
        write_repo(root, "flaky/model", {"config.json": {"fail": True}})
        flaky = invoke(*cfg, "scan", *processor, env=SECRETS)
        assert flaky.exit_code == EXIT_PROBLEM
        assert "1 to retry" in flaky.stdout
        no_secret = invoke(*cfg, "scan", *processor, env={**SECRETS, "HUBSENTRY_SECRET": ""})
        assert no_secret.exit_code == EXIT_CONFIG
        assert "fingerprint.secret_env" in no_secret.stderr
    for value in SECRETS.values():
        for file in tmp_path.glob("h.db*"):
            assert value.encode() not in file.read_bytes()


def test_commands_of_other_parts_fail_clearly_when_missing() -> None:
    with pytest.raises(CommandError, match=r"`hubsentry demo` needs no_such_module\.run_demo"):
        lead_function("no_such_module", "run_demo", "demo")
