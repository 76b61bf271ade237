"""Alert rendering: Block Kit within Slack's limits, hostile text escaped, secrets scrubbed, JSON and text."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from monitor.alerts.model import Alert
from monitor.alerts.render import (
    ELLIPSIS,
    MAX_TEXT_CHARS,
    MAX_TOTAL_BLOCK_CHARS,
    block_text_length,
    format_bytes,
    format_p,
    render_json,
    render_minimal,
    render_slack,
    render_text,
    scrub,
    summary_line,
)
from monitor.findings import Finding, ScanOutcome
from monitor.localslack import validate_blocks

SHA = "3f" * 20
CREATED = datetime(2026, 11, 27, 12, 30, 5, tzinfo=UTC)


def make_alert(
    *, seq: int = 7, url: str | None = None, outcome_kw: dict | None = None, **finding_kw
) -> Alert:
    finding = {
        "protected": "acme/guard",
        "owner": "U0123ABCD",
        "verdict": "derived",
        "p_value": 3e-41,
        "log10_p": -40.52,
        "null": "independent init",
        "transform": "residual permutation + int4",
        "matched": "61/64 sampled MLP units in 4 layers",
        "tests": (
            {
                "name": "row_fixed_point",
                "statistic": 61.0,
                "p_value": 3e-41,
                "log10_p": -40.5,
                "null": "perm",
            },
            {"name": "embedding_rank", "statistic": 0.93, "p_value": 1e-9, "log10_p": -9.0, "exact": True},
        ),
        "severity": "high",
    }
    finding.update(finding_kw)
    outcome = {
        "hub": "huggingface",
        "repo_id": "someorg/guard-ft",
        "commit": SHA,
        "url": url if url is not None else f"https://huggingface.co/someorg/guard-ft/tree/{SHA}",
        "weight_files": ("model.safetensors",),
        "weight_format": "safetensors",
        "bytes_read": 3 * 1024 * 1024 + 512,
        "requests": 9,
        "reproduce": f"hubsentry compare acme/guard huggingface:someorg/guard-ft@{SHA}",
    }
    outcome.update(outcome_kw or {})
    return Alert.from_scan(ScanOutcome(**outcome), Finding(**finding), seq=seq, created_at=CREATED)


def all_texts(blocks) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "text" and isinstance(v, str):
                    out.append(v)
                else:
                    walk(v)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(list(blocks))
    return out


@pytest.fixture(autouse=True)
def _no_budget_overflow(caplog):
    """The renderer's fallback for an over-budget message must never be needed."""
    yield
    assert "exceed the text budget" not in caplog.text


def assert_slack_valid(message) -> None:
    """The message passes the local Slack server's checks and slack_sdk's own model validation."""
    blocks = message.blocks_list()
    assert validate_blocks(blocks) == blocks
    for block in blocks:
        Block.parse(block).to_dict()  # raises SlackObjectFormationError on limit violations
    assert message.text
    assert len(message.text) <= MAX_TEXT_CHARS
    assert block_text_length(blocks) <= MAX_TOTAL_BLOCK_CHARS
    assert len(blocks) <= 50


def test_summary_line_has_severity_pair_p_null_and_transform():
    line = summary_line(make_alert())
    assert line == (
        "[HIGH] acme/guard ↔ someorg/guard-ft  p=3e-41 (H0: independent init)  "
        "derived: residual permutation + int4"
    )


@pytest.mark.parametrize(
    ("p", "log10_p", "expected"),
    [
        (3e-41, -40.52, "3e-41"),
        (0.04, -1.39, "0.04"),
        (0.0, -3000.5, "10^-3000.5"),
        (5e-320, -319.3, "10^-319.3"),  # subnormal: the double has lost precision
        (0.0, math.nan, "< 1e-300"),
        (math.nan, math.nan, "unknown"),
    ],
)
def test_format_p_uses_log10_when_the_float_underflows(p, log10_p, expected):
    assert format_p(p, log10_p) == expected


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024 * 1024 + 512) == "3.0 MiB"
    assert format_bytes(5 * 1024**4) == "5120.0 GiB"


def test_block_kit_message_content():
    message = render_slack(make_alert())
    assert_slack_valid(message)
    blocks = message.blocks
    assert blocks[0]["type"] == "header"
    header = blocks[0]["text"]["text"]
    assert "HIGH" in header
    assert "acme/guard ↔ someorg/guard-ft" in header
    text = "\n".join(all_texts(blocks))
    for expected in (
        "*Verdict*\nderived",
        "*p-value*\n3e-41",
        "*Null hypothesis (H0)*\nindependent init",
        "*Transform found*\nresidual permutation + int4",
        "61/64 sampled MLP units",
        "3.0 MiB in 9 requests",
        "2026-11-27T12:30:05Z",
        "hubsentry-fp-v1",
        f"<https://huggingface.co/someorg/guard-ft/tree/{SHA}|someorg/guard-ft @ {SHA[:12]}>",
        f"```hubsentry compare acme/guard huggingface:someorg/guard-ft@{SHA}```",
        "row_fixed_point",
    ):
        assert expected in text, expected
    fields = next(b for b in blocks if "fields" in b)["fields"]
    assert len(fields) == 10
    # strongest test first
    tests_block = next(t for t in all_texts(blocks) if t.startswith("*Statistical tests*"))
    assert tests_block.index("row_fixed_point") < tests_block.index("embedding_rank")


def test_underflowed_p_value_is_printed_from_log10():
    message = render_slack(make_alert(p_value=0.0, log10_p=-3000.5))
    assert "*p-value*\n10^-3000.5" in all_texts(message.blocks)
    assert "p=10^-3000.5" in message.text


@pytest.mark.parametrize(
    ("owner", "severity", "mention"),
    [
        ("U0123ABCD", "high", "<@U0123ABCD>"),
        ("U0123ABCD", "critical", "<@U0123ABCD>"),
        ("S0ABCDEF1", "high", "<!subteam^S0ABCDEF1>"),
        ("ml-ip-team", "critical", "@ml-ip-team"),
        ("U0123ABCD", "medium", None),
        ("U0123ABCD", "low", None),
        (None, "critical", None),
    ],
)
def test_owner_mentioned_only_for_high_and_critical(owner, severity, mention):
    message = render_slack(make_alert(owner=owner, severity=severity))
    everything = message.text + "\n".join(all_texts(message.blocks))
    if mention is None:
        assert "<@" not in everything
        assert "<!subteam" not in everything
        assert not message.text.startswith("@")
    else:
        assert message.text.startswith(mention)
        assert mention in all_texts(message.blocks)[1]


def test_mention_can_be_switched_off():
    message = render_slack(make_alert(), mention_owner=False)
    assert "<@U0123ABCD>" not in message.text


def test_hostile_uploader_text_cannot_ping_or_link():
    alert = make_alert(
        matched="<!channel> look at <https://evil.example|this> & <@U999>",
        outcome_kw={"repo_id": "evil/<!here>", "weight_files": ("<!everyone>.safetensors",)},
        owner=None,
    )
    message = render_slack(alert)
    assert_slack_valid(message)
    # The header is plain_text, which Slack never parses for mentions or links; everything else is mrkdwn.
    assert message.blocks[0]["text"]["type"] == "plain_text"
    everything = "\n".join([message.text, *all_texts(message.blocks[1:])])
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<https://evil.example", "<@U999>"):
        assert raw not in everything
    assert "&lt;!channel&gt;" in everything
    assert "&amp;" in everything


def test_unsafe_commit_url_is_not_linked():
    message = render_slack(make_alert(url="javascript:alert(1)"))
    commit_text = next(t for t in all_texts(message.blocks) if t.startswith("*Commit*"))
    assert "<javascript" not in commit_text
    assert "`javascript:alert(1)`" in commit_text


def test_long_fields_and_many_tests_still_make_a_valid_message():
    tests = tuple(
        {
            "name": f"test_{i}_" + "x" * 300,
            "statistic": float(i),
            "p_value": 10.0 ** -(i % 300),
            "log10_p": -float(i % 300),
            "null": "n" * 500,
        }
        for i in range(200)
    )
    alert = make_alert(
        protected="p" * 5000,
        null="H" * 10_000,
        transform="t&<>" * 3000,
        matched="m" * 20_000,
        tests=tests,
        exact_files=tuple(f"shard-{i:05d}-of-00500.safetensors" for i in range(500)),
        outcome_kw={
            "repo_id": "org/" + "r" * 5000,
            "reproduce": "hubsentry compare " + "```" + "a&" * 5_000,
            "url": "https://huggingface.co/" + "u" * 10_000,
            "weight_files": tuple(f"f{i}" for i in range(1000)),
            "notes": tuple("note " * 200 for _ in range(50)),
        },
    )
    message = render_slack(alert)
    assert_slack_valid(message)
    assert len(message.blocks[0]["text"]["text"]) <= 150
    assert message.blocks[0]["text"]["text"].endswith(ELLIPSIS)
    texts = all_texts(message.blocks)
    tests_text = next(t for t in texts if t.startswith("*Statistical tests*"))
    assert "(200, strongest first)" in tests_text
    assert "more (full list: `hubsentry alerts list --json`)" in tests_text
    assert "test_299" not in tests_text  # weakest evidence (log10 p = -0) dropped first
    files_text = next(t for t in texts if t.startswith("*Byte-identical files*"))
    assert "… and" in files_text
    assert [b["type"] for b in message.blocks] == ["header"] + ["section"] * 7 + ["context"]
    commit = next(t for t in texts if t.startswith("*Commit*"))
    assert "<https://" not in commit  # too long to link: shown as code, cut
    reproduce = next(t for t in texts if t.startswith("*Reproduce*"))
    assert reproduce.endswith("…```")
    assert re.search(r"&[a-z]*$", reproduce.removesuffix("…```")) is None  # never a split entity
    assert reproduce.endswith("```")
    assert reproduce.count("```") == 2
    assert len(message.text) <= MAX_TEXT_CHARS


def test_truncation_never_splits_an_escape_entity():
    message = render_slack(make_alert(matched="&" * 5000))
    field = next(t for t in all_texts(message.blocks) if t.startswith("*What matched*"))
    body = field.removeprefix("*What matched*\n").removesuffix(ELLIPSIS)
    assert body.replace("&amp;", "") == ""


def test_minimal_message_is_text_only_and_names_the_alert():
    alert = make_alert()
    message = render_minimal(alert)
    assert message.blocks == ()
    assert alert.alert_key in message.text
    assert message.text.startswith("<@U0123ABCD> [HIGH]")
    assert len(render_minimal(make_alert(matched="m" * 50_000, null="n" * 50_000)).text) <= MAX_TEXT_CHARS


def test_credentials_are_scrubbed_from_every_rendering():
    slack_token = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"
    hf_token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    alert = make_alert(
        matched=f"token {slack_token}",
        outcome_kw={
            "reproduce": f"HF_TOKEN={hf_token} hubsentry compare a b",
            "notes": (f"Bearer {hf_token}",),
        },
    )
    renderings = [
        render_slack(alert).text,
        json.dumps(render_slack(alert).blocks_list()),
        render_minimal(alert).text,
        render_text(alert),
        json.dumps(render_json(alert)),
    ]
    for rendered in renderings:
        assert slack_token not in rendered
        assert hf_token not in rendered
    assert "[redacted]" in render_text(alert)
    assert scrub("https://hooks.slack.com/services/T000/B000/XXXX") == "[redacted]"


def test_json_rendering_is_complete_and_strict_json():
    alert = make_alert(p_value=0.0, log10_p=-3000.5)
    payload = render_json(alert)
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["p_display"] == "10^-3000.5"
    assert payload["schema"] == "hubsentry.alert/1"
    assert payload["alert_key"] == alert.alert_key
    assert payload["commit"] == SHA
    assert payload["created_at"] == "2026-11-27T12:30:05Z"
    assert payload["tests"][0] == {
        "name": "row_fixed_point",
        "statistic": 61.0,
        "p_value": 3e-41,
        "log10_p": -40.5,
        "null": "perm",
        "exact": None,
    }
    nan_alert = make_alert(p_value=math.nan, log10_p=math.inf)
    assert json.loads(json.dumps(render_json(nan_alert), allow_nan=False))["p_value"] is None


def test_plain_text_rendering():
    text = render_text(make_alert())
    first, *rest = text.splitlines()
    assert first.startswith("[HIGH] acme/guard ↔ someorg/guard-ft")
    joined = "\n".join(rest)
    assert "log10 p = -40.52" in joined
    assert f"https://huggingface.co/someorg/guard-ft/tree/{SHA}" in joined
    assert "reproduce   hubsentry compare" in joined
    assert "test        row_fixed_point" in joined


def test_non_new_state_is_shown():
    alert = make_alert()
    resolved = Alert(**{**{s: getattr(alert, s) for s in Alert.__slots__}, "state": "resolved"})
    assert "state *resolved*" in all_texts(render_slack(resolved).blocks)[-1]


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=4000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protected=_TEXT.filter(bool),
    repo=_TEXT.filter(bool),
    matched=_TEXT,
    null=_TEXT,
    transform=_TEXT,
    reproduce=_TEXT,
    url=_TEXT,
    n_tests=st.integers(min_value=0, max_value=250),
)
def test_any_text_yields_a_valid_message(protected, repo, matched, null, transform, reproduce, url, n_tests):
    tests = tuple(
        {"name": repo[:50], "p_value": 0.5, "log10_p": -0.3, "null": null[:100]} for _ in range(n_tests)
    )
    alert = make_alert(
        protected=protected,
        matched=matched,
        null=null,
        transform=transform,
        tests=tests,
        url=url,
        outcome_kw={"repo_id": repo, "reproduce": reproduce},
    )
    assert_slack_valid(render_slack(alert))
    assert len(render_minimal(alert).text) <= MAX_TEXT_CHARS
    json.dumps(render_json(alert), allow_nan=False)
