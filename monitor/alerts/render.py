"""Render an alert for people (Slack Block Kit, plain text) and for machines (JSON).

Everything a responder needs to triage without opening another tool goes into the message: who is affected
(protected model, owner), what was found (verdict, transform, what matched), how sure we are (p-value *and the
null it was computed under*, because a p-value without its null is not evidence), what it cost to find (bytes
read, requests), where to look (the exact commit, not the moving branch) and how to check it independently
(the reproduce command and the algorithm version).

Repo names, file names and free text come from whoever uploaded the suspect repo, so they are hostile input:
they are escaped for Slack mrkdwn (a file named ``<!channel>`` must not ping a channel), stripped of anything
that looks like a credential, and cut to Slack's limits with an ellipsis instead of being rejected.
Slack's limits are enforced here and again by `monitor.localslack`, which rejects what Slack would reject.
"""

from __future__ import annotations

import logging
import math
import re
import socket
from dataclasses import dataclass
from typing import Any

from monitor import __version__
from monitor.alerts.model import Alert

__all__ = [
    "ELLIPSIS",
    "MAX_BLOCKS",
    "MAX_FIELDS",
    "MAX_FIELD_CHARS",
    "MAX_HEADER_CHARS",
    "MAX_SECTION_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_TOTAL_BLOCK_CHARS",
    "SlackMessage",
    "block_text_length",
    "format_bytes",
    "format_p",
    "render_json",
    "render_minimal",
    "render_slack",
    "render_text",
    "scrub",
    "summary_line",
]

MAX_BLOCKS = 50
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_FIELD_CHARS = 2000
MAX_FIELDS = 10
MAX_CONTEXT_ELEMENTS = 10
MAX_TOTAL_BLOCK_CHARS = 10_000
"""Slack answers ``msg_blocks_too_long`` at roughly 13.2k characters of block text (undocumented); stay well
below so escaping or a future extra block cannot push a message over."""
MAX_TEXT_CHARS = 3000
"""The ``text`` fallback is what notifications and screen readers show; long is useless there."""
ELLIPSIS = "…"
JSON_SCHEMA = "hubsentry.alert/1"

# Per-part budgets of escaped text. Worst case: header 150 + summary 700 + 10 fields × 380 + commit 800 +
# tests 1600 + files 800 + notes 500 + reproduce 1200 + context 300 = 9,850 < MAX_TOTAL_BLOCK_CHARS.
_FIELD_BUDGET = 380
_SUMMARY_BUDGET = 700
_COMMIT_BUDGET = 800
_TESTS_BUDGET = 1600
_FILES_BUDGET = 800
_NOTES_BUDGET = 500
_REPRODUCE_BUDGET = 1200
_CONTEXT_BUDGET = 300
_MAX_LINK_URL = 500
_MAX_TEST_LINES = 12

_SEVERITY_EMOJI = {
    "critical": ":rotating_light:",
    "high": ":red_circle:",
    "medium": ":large_orange_circle:",
    "low": ":white_circle:",
}
_MENTION_SEVERITIES = frozenset({"critical", "high"})

logger = logging.getLogger(__name__)

_SECRET_PATTERNS = (
    re.compile(r"xox[a-z]-[A-Za-z0-9-]{6,}"),
    re.compile(r"xapp-[A-Za-z0-9-]{6,}"),
    re.compile(r"hf_[A-Za-z0-9]{16,}"),
    re.compile(r"https://hooks\.slack\.com/[A-Za-z0-9/_-]+"),
    re.compile(r"(?i)(bearer|token[=:]\s*)\s*[A-Za-z0-9._~+/=-]{8,}"),
)
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")
_SLACK_GROUP_ID = re.compile(r"^S[A-Z0-9]{6,}$")
_SAFE_URL = re.compile(r"^https?://[^\s<>|]+$")


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """What `chat.postMessage` gets: the fallback ``text`` (always set) and Block Kit ``blocks``."""

    text: str
    blocks: tuple[dict[str, Any], ...] = ()

    def blocks_list(self) -> list[dict[str, Any]]:
        return [dict(b) for b in self.blocks]


def scrub(text: str) -> str:
    """Replace anything shaped like a credential (Slack/HF tokens, webhook URLs, bearer values) with a marker.

    Defence in depth: the tokens HubSentry holds never enter alert evidence, but evidence text also comes from
    uploaders and from commands, and a message leaking someone's token into a shared channel is an incident.
    """
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


def format_p(p_value: float, log10_p: float) -> str:
    """Human form of a p-value that stays exact when the float underflows.

    ``3e-41`` while the double can hold it; ``10^-3000.5`` (from ``log10_p``) once it underflows to zero or
    into subnormals, because "p=0" would claim certainty no test can give.
    """
    if math.isfinite(p_value) and p_value >= 1e-300:
        return f"{p_value:.2g}"
    if math.isfinite(log10_p):
        return f"10^{log10_p:.1f}"
    if p_value == 0.0:
        return "< 1e-300"
    return "unknown"


def format_bytes(n: int) -> str:
    """``1.5 MiB``-style size for humans (binary units, as budgets are configured)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def summary_line(alert: Alert) -> str:
    """One plain-text line: severity, who ↔ whom, p with its null, verdict and transform."""
    f = alert.finding
    null = _cut(f.null or "unstated null", 80)
    line = (
        f"[{f.severity.upper()}] {f.protected} ↔ {alert.repo_id}  p={format_p(f.p_value, f.log10_p)}"
        f" (H0: {null})  {f.verdict}: {f.transform or 'unknown transform'}"
    )
    return scrub(line)


def render_slack(alert: Alert, *, mention_owner: bool = True) -> SlackMessage:
    """Block Kit message for one alert, within Slack's limits (see module constants).

    Args:
        alert (`Alert`): the alert to render.
        mention_owner (`bool`): @-mention the owning team; applied only to ``high``/``critical`` alerts so
            that routine findings do not train people to ignore pings.

    Returns:
        `SlackMessage` whose ``text`` is the escaped `summary_line` (prefixed by the mention when one applies)
        and whose ``blocks`` hold header, summary, fields, commit link, tests, exact files, reproduce command
        and a context line.
    """
    f = alert.finding
    mention = _mention(f.owner) if mention_owner and f.severity in _MENTION_SEVERITIES else ""
    summary = _esc(summary_line(alert))
    text = _fit_escaped(f"{mention} {summary}" if mention else summary, MAX_TEXT_CHARS)

    emoji = _SEVERITY_EMOJI.get(f.severity, "")
    header = _cut(scrub(f"{emoji} {f.severity.upper()} · {f.protected} ↔ {alert.repo_id}").strip(), 150)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
    ]

    verdict_sentence = {
        "derived": "looks like a copy or derivative of",
        "inconclusive": "shows some, not conclusive, evidence of derivation from",
        "independent": "looks independent of",
    }.get(f.verdict, "was compared with")
    lead = (
        f"`{_code(alert.repo_id)}` {verdict_sentence} protected model *{_esc(scrub(f.protected))}*"
        f" ({_esc(scrub(f.transform or 'unknown transform'))})."
    )
    if mention:
        lead = f"{mention} {lead}"
    blocks.append(_section(_fit_escaped(lead, _SUMMARY_BUDGET)))

    field_items = [
        ("Verdict", f.verdict),
        ("Severity", f.severity),
        ("p-value", format_p(f.p_value, f.log10_p)),
        ("Null hypothesis (H0)", f.null or "unstated"),
        ("Transform found", f.transform or "unknown"),
        ("What matched", f.matched or "—"),
        ("Read", f"{format_bytes(alert.bytes_read)} in {alert.requests} requests"),
        ("Weights", _weights_line(alert)),
        ("First seen (UTC)", _iso(alert)),
        ("Algorithm", alert.algo),
    ]
    blocks.append(
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _fit_escaped(f"*{label}*\n{_esc(scrub(value))}", _FIELD_BUDGET)}
                for label, value in field_items[:MAX_FIELDS]
            ],
        }
    )

    blocks.append(_section(_fit_escaped(_commit_line(alert), _COMMIT_BUDGET)))

    if f.tests:
        blocks.append(_section(_tests_text(alert)))
    if f.exact_files:
        blocks.append(_section(_files_text("Byte-identical files", f.exact_files)))
    if alert.notes:
        blocks.append(_section(_files_text("Scan notes", alert.notes, budget=_NOTES_BUDGET)))
    if alert.reproduce:
        blocks.append(_section(_reproduce_text(alert.reproduce)))

    context = (
        f"hubsentry {__version__} on {_esc(socket.gethostname())} · alert `{alert.alert_key[:16]}` · "
        f"seq {alert.seq} · hub {_esc(scrub(alert.hub))}"
    )
    if alert.state != "new":
        context += f" · state *{_esc(alert.state)}*"
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _fit_escaped(context, _CONTEXT_BUDGET)}]}
    )

    if block_text_length(blocks) > MAX_TOTAL_BLOCK_CHARS:  # the budgets above make this unreachable
        logger.error(
            "alert %s: rendered blocks exceed the text budget; sending the core blocks only", alert.seq
        )
        blocks = [*blocks[:4], blocks[-1]]
    return SlackMessage(text=text, blocks=tuple(blocks))


def render_minimal(alert: Alert) -> SlackMessage:
    """Text-only message (no blocks) used when Slack rejected the full one (``invalid_blocks``,
    ``msg_too_long``): the responder still learns what, where and how sure, and the alert key to look up."""
    f = alert.finding
    lines = [
        _esc(summary_line(alert)),
        f"commit: {_esc(scrub(alert.url or alert.commit))}",
        f"alert: {alert.alert_key} (seq {alert.seq}) · full evidence: hubsentry alerts list --json",
    ]
    if f.severity in _MENTION_SEVERITIES and f.owner:
        lines[0] = f"{_mention(f.owner)} {lines[0]}"
    return SlackMessage(text=_fit_escaped("\n".join(lines), MAX_TEXT_CHARS))


def render_text(alert: Alert) -> str:
    """Multi-line plain text for logs, e-mail and the terminal (no escaping, credentials scrubbed)."""
    f = alert.finding
    rows = [
        ("verdict", f.verdict),
        ("severity", f.severity),
        ("p-value", f"{format_p(f.p_value, f.log10_p)} (log10 p = {_fmt_log10(f.log10_p)})"),
        ("null (H0)", f.null or "unstated"),
        ("transform", f.transform or "unknown"),
        ("matched", f.matched or "-"),
        ("owner", f.owner or "-"),
        ("commit", alert.url or f"{alert.hub}:{alert.repo_id}@{alert.commit}"),
        ("read", f"{format_bytes(alert.bytes_read)} in {alert.requests} requests"),
        ("weights", _weights_line(alert)),
        ("first seen", _iso(alert)),
        ("algo", alert.algo),
        ("alert key", f"{alert.alert_key} (seq {alert.seq}, state {alert.state})"),
    ]
    if alert.reproduce:
        rows.append(("reproduce", alert.reproduce))
    out = [summary_line(alert)]
    out.extend(f"  {label:<11} {scrub(_cut(str(value), 2000))}" for label, value in rows)
    for record in _sorted_tests(alert)[:_MAX_TEST_LINES]:
        out.append(f"  test        {scrub(_cut(_test_plain(record), 300))}")
    if len(f.tests) > _MAX_TEST_LINES:
        out.append(f"  test        ... and {len(f.tests) - _MAX_TEST_LINES} more")
    for name in f.exact_files[:20]:
        out.append(f"  identical   {scrub(_cut(name, 300))}")
    return "\n".join(out)


def render_json(alert: Alert) -> dict[str, Any]:
    """Stable JSON object for ``alerts list --json`` and webhook receivers (schema ``hubsentry.alert/1``).

    Non-finite floats become ``null`` so the result always serialises with ``allow_nan=False``; per-test
    ``details`` are left out (they can be large; the database keeps them).
    """
    f = alert.finding
    return {
        "schema": JSON_SCHEMA,
        "alert_key": alert.alert_key,
        "seq": alert.seq,
        "state": alert.state,
        "summary": summary_line(alert),
        "severity": f.severity,
        "verdict": f.verdict,
        "protected": f.protected,
        "owner": f.owner,
        "hub": alert.hub,
        "repo_id": alert.repo_id,
        "commit": alert.commit,
        "url": scrub(alert.url),
        "p_value": _finite(f.p_value),
        "log10_p": _finite(f.log10_p),
        "p_display": format_p(f.p_value, f.log10_p),
        "null": scrub(f.null),
        "transform": scrub(f.transform),
        "matched": scrub(f.matched),
        "exact_files": [scrub(n) for n in f.exact_files],
        "tests": [_test_json(t) for t in f.tests],
        "bytes_read": alert.bytes_read,
        "requests": alert.requests,
        "weight_files": [scrub(n) for n in alert.weight_files],
        "weight_format": alert.weight_format,
        "reproduce": scrub(alert.reproduce),
        "algo": alert.algo,
        "notes": [scrub(n) for n in alert.notes],
        "created_at": _iso(alert),
    }


def block_text_length(blocks: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> int:
    """Characters of text across all blocks: what Slack's undocumented ``msg_blocks_too_long`` counts."""
    total = 0
    for block in blocks:
        for part in _texts(block):
            total += len(part)
    return total


# --------------------------------------------------------------------------------------------------- helpers


def _texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        found: list[str] = []
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_texts(value))
        return found
    if isinstance(node, list | tuple):
        return [t for item in node for t in _texts(item)]
    return []


def _esc(text: str) -> str:
    """Slack's three control characters; everything else is literal in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Text safe inside a single-backtick code span."""
    return _esc(scrub(text)).replace("`", "'")


def _cut(text: str, limit: int) -> str:
    """Plain-text truncation with an ellipsis (counted in the limit)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + ELLIPSIS


def _fit_escaped(text: str, limit: int) -> str:
    """Truncate escaped mrkdwn to ``limit`` characters (ellipsis included) without splitting an ``&amp;``
    entity or a ``<link|label>``, and without leaving a ``` code block open."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 4)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    lt = cut.rfind("<")
    if lt != -1 and ">" not in cut[lt:]:
        cut = cut[:lt]
    cut = cut.rstrip("`")
    if cut.count("```") % 2 == 1:
        return cut + ELLIPSIS + "```"
    return cut + ELLIPSIS


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _fit_escaped(text, MAX_SECTION_CHARS)}}


def _mention(owner: str | None) -> str:
    """Slack mention syntax for the owner: user IDs ping a user, ``S…`` IDs a user group; a plain team name
    cannot ping anyone, so it is shown as ``@team`` text (escaped) rather than faked."""
    if not owner:
        return ""
    owner = owner.strip()
    if _SLACK_ID.match(owner):
        return f"<@{owner}>"
    if _SLACK_GROUP_ID.match(owner):
        return f"<!subteam^{owner}>"
    return "@" + _esc(scrub(_cut(owner.lstrip("@"), 80)))


def _commit_line(alert: Alert) -> str:
    label = _esc(scrub(f"{alert.repo_id} @ {alert.commit[:12] or 'unknown commit'}")).replace("|", "¦")
    url = alert.url
    if url and len(url) <= _MAX_LINK_URL and _SAFE_URL.match(url) and scrub(url) == url:
        link = f"<{url.replace('&', '&amp;')}|{label}>"
    else:
        link = f"`{_code(url or label)}`"
    return f"*Commit* ({_esc(scrub(alert.hub))}): {link}\n`{_code(alert.commit or 'unknown')}`"


def _weights_line(alert: Alert) -> str:
    files = ", ".join(alert.weight_files[:5]) or "none"
    if len(alert.weight_files) > 5:
        files += f" (+{len(alert.weight_files) - 5} more)"
    return f"{alert.weight_format or 'unknown format'}: {files}"


def _iso(alert: Alert) -> str:
    return alert.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt_log10(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "unknown"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _sorted_tests(alert: Alert) -> list[dict[str, Any]]:
    """Strongest evidence first, so truncation drops the weakest tests."""

    def strength(record: dict[str, Any]) -> float:
        value = record.get("log10_p")
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf

    return sorted(alert.finding.tests, key=strength)


def _test_plain(record: dict[str, Any]) -> str:
    p = _num(record.get("p_value"))
    lp = _num(record.get("log10_p"))
    parts = [str(record.get("name") or "test"), f"p={format_p(p, lp)}"]
    if isinstance(record.get("statistic"), int | float):
        parts.append(f"stat={record['statistic']:.4g}")
    if record.get("null"):
        parts.append(f"H0: {record['null']}")
    if record.get("exact") is True:
        parts.append("exact")
    return "  ".join(parts)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _test_json(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("name", "statistic", "p_value", "log10_p", "null", "exact"):
        value = record.get(key)
        if isinstance(value, float):
            value = _finite(value)
        elif isinstance(value, str):
            value = scrub(value)
        elif value is not None and not isinstance(value, bool | int):
            value = scrub(str(value))
        out[key] = value
    return out


def _tests_text(alert: Alert) -> str:
    tests = _sorted_tests(alert)
    header = f"*Statistical tests* ({len(tests)}, strongest first)"
    lines = [header]
    used = len(header)
    shown = 0
    for record in tests[:_MAX_TEST_LINES]:
        line = "• " + _esc(scrub(_cut(_test_plain(record), 240)))
        if used + len(line) + 1 > _TESTS_BUDGET - 80:
            break
        lines.append(line)
        used += len(line) + 1
        shown += 1
    if shown < len(tests):
        lines.append(f"… and {len(tests) - shown} more (full list: `hubsentry alerts list --json`)")
    return "\n".join(lines)


def _files_text(title: str, names: tuple[str, ...], *, budget: int = _FILES_BUDGET) -> str:
    lines = [f"*{title}* ({len(names)})"]
    used = len(lines[0])
    shown = 0
    for name in names:
        line = f"• `{_code(_cut(name, 200))}`"
        if used + len(line) + 1 > budget - 40:
            break
        lines.append(line)
        used += len(line) + 1
        shown += 1
    if shown < len(names):
        lines.append(f"… and {len(names) - shown} more")
    return "\n".join(lines)


def _reproduce_text(command: str) -> str:
    body = _fit_escaped(_esc(scrub(command)).replace("```", "`\u200b``"), _REPRODUCE_BUDGET)
    return f"*Reproduce*\n```{body}```"
